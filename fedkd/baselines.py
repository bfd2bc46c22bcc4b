"""References a paper reports beside federated distillation: the teachers' ensemble itself, a one-hot student
trained only on the server's labeled split, and a NON-FEDERATED oracle trained on the pooled client data."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from fedkd.config import RunConfig
from fedkd.data import Benchmark
from fedkd.device import resolve_device
from fedkd.metrics import group_report
from fedkd.models import build_model
from fedkd.teachers import TEACHER_OBJECTIVES, TeacherModels, train_teacher
from fedkd.training import predict_logits


def ensemble_report(teacher_logits: torch.Tensor, bench: Benchmark) -> dict:
    """The teachers' ensemble (mean of softmax probabilities) evaluated directly on test."""
    test = bench["test"]
    pred = torch.softmax(teacher_logits, dim=-1).mean(0).argmax(1).numpy()
    return group_report(pred, test.y, test.g, bench.group_names)


def _trained_report(cfg: RunConfig, bench: Benchmark, split: str, objective: str, epochs: int, seed: int) -> dict:
    params = TEACHER_OBJECTIVES.params(objective)  # the run's teacher settings where that objective has them
    shared = {f.name: getattr(cfg.teacher, f.name) for f in dataclasses.fields(params) if hasattr(cfg.teacher, f.name)}
    teacher_cfg = params(**{**shared, "objective": objective, "epochs": epochs})
    model = build_model(cfg.student.arch, bench.input_shape, bench.num_classes, seed=seed,
                        pretrained_path=cfg.student.pretrained_path).to(resolve_device(cfg.device))
    torch.manual_seed(seed)
    train_teacher(TeacherModels(teacher=model, base=None), bench[split], bench.num_classes, bench.num_groups,
                  teacher_cfg, False, np.random.default_rng([seed, 5]), lambda: model)
    test = bench["test"]
    pred = predict_logits(model, test.x).argmax(1).numpy()
    return group_report(pred, test.y, test.g, bench.group_names)


def one_hot_report(cfg: RunConfig, bench: Benchmark) -> dict:
    """The student architecture trained with cross-entropy on the server's labeled split alone: what the server
    could do without any client."""
    return _trained_report(cfg, bench, "val", "erm", cfg.baselines.one_hot_epochs, cfg.seed + 101)


def centralized_reports(cfg: RunConfig, bench: Benchmark) -> dict[str, dict]:
    """NON-FEDERATED references: the student architecture trained on the pooled client data with erm and with
    group_dro, for teacher.epochs x num_rounds epochs (the teachers' own budget)."""
    epochs = cfg.teacher.epochs * cfg.federation.num_rounds
    return {f"centralized_{name}": {**_trained_report(cfg, bench, "pool", name, epochs, cfg.seed + 202),
                                    "non_federated": True}
            for name in ("erm", "group_dro")}
