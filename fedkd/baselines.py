"""References a paper reports beside federated distillation: the teachers' ensemble itself and NON-FEDERATED
oracles trained on the pooled client data (the server-only references: ``fedkd.server_only``)."""

from __future__ import annotations

import copy

import numpy as np
import torch

from fedkd.config import RunConfig, TeacherConfig
from fedkd.data import Benchmark
from fedkd.device import resolve_device
from fedkd.dfr import deep_feature_reweighting
from fedkd.metrics import worst_group_accuracy
from fedkd.models import build_model
from fedkd.teachers import TEACHER_OBJECTIVES, TeacherModels, as_objective, fit_on, train_teacher
from fedkd.training import predict_logits


def ensemble_report(teacher_logits: torch.Tensor, bench: Benchmark) -> dict:
    """The teachers' ensemble evaluated directly on test: the mean of their softmax probabilities, and under
    ``vote`` the majority of their top classes (AGRE-KD's "Deep Ens." row; ties to the lowest class), and
    ``members`` each teacher alone, from the same answers."""
    probs = torch.softmax(teacher_logits, dim=-1)
    report = bench.report(probs.mean(0).argmax(1).numpy())
    votes = torch.nn.functional.one_hot(probs.argmax(-1), probs.shape[-1]).sum(0)
    report["vote"] = _short(bench.report(votes.argmax(-1).numpy()))
    report["members"] = [_short(bench.report(p.argmax(1).numpy())) for p in probs]
    return report


def _short(report: dict) -> dict:
    """A report's headline numbers, without the per-group tables."""
    return {k: v for k, v in report.items() if k not in ("per_group_accuracy", "group_counts")}


def student_network(cfg: RunConfig, bench: Benchmark, seed: int) -> torch.nn.Module:
    """The student's architecture at its seeded initialisation (pretrained where ``student.pretrained_path`` is
    given), on the run's device: the network every reference trains."""
    return build_model(cfg.student.arch, bench.input_shape, bench.num_classes, seed=seed,
                       pretrained_path=cfg.student.pretrained_path).to(resolve_device(cfg.device))


def teachers_schedule(cfg: RunConfig, objective: str, **changes: object) -> TeacherConfig:
    """The run's teacher settings (SGD schedule included) as ``objective``'s parameters, with ``changes``: the
    references train on the teachers' budget."""
    return as_objective(cfg.teacher, objective, **changes)


def _trained_model(cfg: RunConfig, bench: Benchmark, split: str, objective: str, epochs: int,
                   seed: int) -> torch.nn.Module:
    model = student_network(cfg, bench, seed)
    torch.manual_seed(seed)
    train_teacher(TeacherModels(teacher=model, base=None), bench[split], bench.num_classes, bench.num_groups,
                  teachers_schedule(cfg, objective, epochs=epochs), False, np.random.default_rng([seed, 5]),
                  lambda: model)
    return model


def _group_dro_selected_on_val(cfg: RunConfig, bench: Benchmark, epochs: int,
                               seed: int) -> tuple[torch.nn.Module, int]:
    """Online group DRO on the pooled client data, the epoch with the best validation worst-group accuracy kept
    (the first of equals), as the authors' code keeps a robust model (kohpangwei/group_DRO, train.py,
    ``--save_best``: the minimum of the validation group accuracies, a strict improvement): at the teachers' step size
    over the pooled data's many more steps, the last epoch can have diverged (full MNIST, lr 0.05: chance
    accuracy from the sixth epoch on). Returns the model and its 1-based epoch. The same SGD trajectory as the
    ``group_dro`` teacher objective: its loss, its group weights, its data order."""
    model = student_network(cfg, bench, seed)
    torch.manual_seed(seed)
    schedule = teachers_schedule(cfg, "group_dro", epochs=epochs)
    dro = TEACHER_OBJECTIVES["group_dro"](bench["pool"], bench.num_classes, bench.num_groups, schedule)
    val = bench["val"]
    best = {"wga": -1.0, "epoch": 0, "state": None}
    epoch = 0

    def keep_best() -> None:
        nonlocal epoch
        epoch += 1
        pred = predict_logits(model, val.x).argmax(1).numpy()
        wga = worst_group_accuracy(pred, val.y, val.g)
        if wga > best["wga"]:
            best.update(wga=wga, epoch=epoch, state=copy.deepcopy(model.state_dict()))

    fit_on(model, bench["pool"], dro.loss, schedule, np.random.default_rng([seed, 5]), epoch_end=keep_best)
    model.load_state_dict(best["state"])
    return model, best["epoch"]


def _test_report(model: torch.nn.Module, bench: Benchmark) -> dict:
    return bench.report(predict_logits(model, bench["test"].x).argmax(1).numpy())


def centralized_reports(cfg: RunConfig, bench: Benchmark) -> dict[str, dict]:
    """NON-FEDERATED references: the student architecture trained on the pooled client data with erm (the last
    epoch) and with group_dro (the epoch of best validation worst-group accuracy), for teacher.epochs x
    num_rounds epochs (the teachers' own budget); and the erm model with its last
    layer refitted on the labeled server split as DFR teachers do it (``fedkd.dfr.deep_feature_reweighting``,
    ``student.dfr_subsets`` subsets): AGRE-KD's "One-hot" and "One-hot + DFR" rows (labels on the
    biased training data)."""
    epochs = cfg.teacher.epochs * cfg.federation.num_rounds
    erm = _trained_model(cfg, bench, "pool", "erm", epochs, cfg.seed + 202)
    dro, dro_epoch = _group_dro_selected_on_val(cfg, bench, epochs, cfg.seed + 202)
    reports = {"centralized_erm": _test_report(erm, bench),
               "centralized_group_dro": {**_test_report(dro, bench), "selected_epoch": dro_epoch}}
    deep_feature_reweighting(erm, bench["val"], bench["pool"], cfg.student.dfr_subsets,
                             np.random.default_rng([cfg.seed, 303]), balance=cfg.student.dfr_balance)
    reports["centralized_erm_dfr"] = _test_report(erm, bench)
    return {name: {**report, "non_federated": True} for name, report in reports.items()}
