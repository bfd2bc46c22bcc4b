"""The student being distilled: the model on its device, its optimizer, the student objective and the generator
of its minibatch order. The round loop hands it targets; it keeps everything that training changes."""

from __future__ import annotations

import numpy as np
import torch

from fedkd.aggregators import Aggregator
from fedkd.checkpoint import restore_rng, rng_state
from fedkd.config import RunConfig
from fedkd.data import Benchmark
from fedkd.distill import STUDENT_OBJECTIVES, distill_student
from fedkd.models import build_model
from fedkd.privacy import ReleasedTargets
from fedkd.semi_supervised import VirtualAdversarial
from fedkd.training import sgd


class StudentTraining:
    """The student of ``cfg.student`` on ``device``, built for ``data`` and seeded by ``cfg.seed``."""

    def __init__(self, cfg: RunConfig, data: Benchmark, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device
        s = cfg.student
        self.model = build_model(s.arch, data.input_shape, data.num_classes, seed=cfg.seed,
                                 pretrained_path=s.pretrained_path).to(device)
        self.optimizer = sgd(self.model, s.lr, s.momentum, s.weight_decay)
        self.objective = STUDENT_OBJECTIVES[s.objective](s, self.model, data["val"], data.num_classes)
        self.generator = np.random.default_rng([cfg.seed, 1])
        self.unlabeled = None if s.unlabeled == "none" else VirtualAdversarial(s, seed=cfg.seed)

    def state_dict(self) -> dict:
        """Also torch's global generator: distillation reseeds it each round, everything after draws from it."""
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "objective": self.objective.state_dict(), "rng": rng_state(self.generator),
                 "torch_rng": torch.get_rng_state()}
        if self.unlabeled is not None:
            state["unlabeled"] = self.unlabeled.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.objective.load_state_dict(state["objective"])
        restore_rng(self.generator, state["rng"])
        torch.set_rng_state(state["torch_rng"])
        if self.unlabeled is not None:
            self.unlabeled.load_state_dict(state["unlabeled"])

    @property
    def needs_val_softlabels(self) -> bool:
        """Whether the objective wants the teachers' answers on the labeled server split every round."""
        return self.objective.needs_val_softlabels

    def observe_val(self, val_logits: torch.Tensor) -> None:
        """Show the objective the teachers' mean tempered probabilities on the labeled server split."""
        self.objective.observe_val(torch.softmax(val_logits / self.cfg.student.temperature, -1).mean(0))

    def distill(self, server_round: int, x: np.ndarray, indices: np.ndarray,
                targets: Aggregator | ReleasedTargets) -> float | None:
        """Distill on the transfer inputs ``x[indices]`` with ``targets``; None when there is nothing to distill
        on yet. Torch is reseeded per round, so the round's draws do not depend on how the run got there."""
        torch.manual_seed(self.cfg.seed * 7919 + server_round)
        if not len(indices):
            return None
        if self.unlabeled is not None:
            self.unlabeled.observe_pool(x)
        return distill_student(self.model, self.optimizer, self.objective, x[indices], targets, self.generator,
                               self.unlabeled)
