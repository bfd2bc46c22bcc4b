"""Evaluation and model selection: which model a round ends with (the distilled student or its DFR copy), which
round's model the run keeps, the baselines beside the run, and the summary that closes it. Selection looks at the
server's labeled split only; the test split is only reported."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from flwr.serverapp import Grid

from fedkd.baselines import centralized_reports, ensemble_report
from fedkd.config import RunConfig
from fedkd.data import Benchmark
from fedkd.device import cpu_state
from fedkd.dfr import deep_feature_reweighting, held_out_split
from fedkd.display import RunDisplay
from fedkd.metrics import worst_group_accuracy
from fedkd.provenance import provenance
from fedkd.results import RunDirectory
from fedkd.server_only import server_only_reports
from fedkd.training import predict_logits

if TYPE_CHECKING:
    from server.privacy_session import PrivacySession
    from server.query_session import QuerySession


@dataclass(eq=False, repr=False)
class Evaluation:
    """Scores models of ``student`` on ``data`` and keeps the one the run ends with (the best round's under
    ``student.select_best_round``, else the last round's)."""

    cfg: RunConfig
    data: Benchmark
    run_dir: RunDirectory
    display: RunDisplay
    student: torch.nn.Module
    privacy: PrivacySession
    final_model: torch.nn.Module = field(init=False)
    best_score: float | None = field(init=False, default=None)
    best_round: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.final_model = self.student

    def state_dict(self) -> dict:
        return {"score": self.best_score, "round": self.best_round,
                "model": self.final_model.state_dict() if self.cfg.student.select_best_round else None}

    def load_state_dict(self, state: dict) -> None:
        self.best_score, self.best_round = state["score"], state["round"]
        if state["model"] is not None:
            self.final_model = copy.deepcopy(self.student)
            self.final_model.load_state_dict(state["model"])

    def evaluate(self, model: torch.nn.Module, split: str = "test") -> tuple[dict, np.ndarray]:
        """The group report of ``model`` on ``split``, and its predictions."""
        data = self.data[split]
        pred = predict_logits(model, data.x).argmax(1).numpy()
        return self.data.report(pred, split), pred

    def validation_columns(self, model: torch.nn.Module) -> dict:
        """``val``: the round model on the server's labeled split, what selecting a round by validation reads
        (nothing when the server has no labeled split)."""
        if len(self.data["val"]) == 0:
            return {}
        report = self.evaluate(model, "val")[0]
        return {"val": {k: report[k] for k in ("accuracy", "worst_group_accuracy", "mean_group_accuracy")}}

    def round_model(self) -> tuple[torch.nn.Module, str]:
        """The distilled student, or with student DFR a copy whose last layer is retrained on part of the
        labeled server split, kept only if it has the better worst-group accuracy on the other part."""
        cfg = self.cfg.student
        if not cfg.dfr:
            return self.student, "distilled"
        fit_part, select_part = held_out_split(self.data["val"], cfg.dfr_holdout)
        candidate = copy.deepcopy(self.student)
        deep_feature_reweighting(candidate, fit_part, self.data["transfer"], cfg.dfr_subsets,
                                 np.random.default_rng([self.cfg.seed, 3]), balance=cfg.dfr_balance)
        scores = {}
        for name, model in (("dfr", candidate), ("distilled", self.student)):
            pred = predict_logits(model, select_part.x).argmax(1).numpy()
            scores[name] = worst_group_accuracy(pred, select_part.y, select_part.g)
        return (candidate, "dfr") if scores["dfr"] >= scores["distilled"] else (self.student, "distilled")

    def keep_if_best(self, model: torch.nn.Module, server_round: int) -> None:
        """Model selection on the server's labeled split only: the round with the best validation WGA."""
        if not self.cfg.student.select_best_round:
            self.final_model = model
            return
        score = self.evaluate(model, "val")[0]["worst_group_accuracy"]
        if self.best_score is None or score > self.best_score:
            self.best_score, self.best_round = score, server_round
            self.final_model = copy.deepcopy(model)

    def baselines(self, grid: Grid, server_round: int, queries: QuerySession) -> dict:
        """The references of ``cfg.baselines``: the teachers' ensemble (asked through ``queries``, unless that
        would release outside the privacy accounting), a one-hot student and the centralized ones."""
        cfg = self.cfg.baselines
        out = {}
        if cfg.ensemble and self.privacy.active:
            out["ensemble"] = {"skipped": "the teachers' answers on the test split would be a release outside the "
                                          f"privacy={self.cfg.privacy.name} accounting"}
        elif cfg.ensemble:
            out["ensemble"] = ensemble_report(queries.split_logits(grid, server_round, "test"), self.data)
        if cfg.server_only:
            self.display.phase(server_round, "baseline: server-only models on the labeled server split")
            out.update(server_only_reports(self.cfg, self.data))
        if cfg.centralized:
            self.display.phase(server_round, "baseline: NON-FEDERATED centralized erm and group_dro")
            out.update(centralized_reports(self.cfg, self.data))
        return out

    def finish(self, last: dict, baselines: dict, run_columns: dict, wall_seconds: float) -> dict:
        """Write the kept model, its test predictions and the summary (``run_columns``: what the other parts of
        the server add to it, in order); returns the summary."""
        test_report, pred = self.evaluate(self.final_model)
        test = self.data["test"]
        self.run_dir.write_predictions("test", test.y, test.g, pred)
        self.run_dir.write_probabilities(torch.softmax(predict_logits(self.final_model, test.x), 1).numpy())
        self.run_dir.save_student(cpu_state(self.final_model))
        summary = {
            "run_dir": str(self.run_dir.path),
            "dataset": self.cfg.dataset.name,
            "dataset_description": self.data.description,
            "aggregator": self.cfg.aggregator.name,
            "student_objective": self.cfg.student.objective,
            "teacher_objective": self.cfg.teacher.objective,
            "num_clients": self.cfg.federation.num_clients,
            "num_rounds": self.cfg.federation.num_rounds,
            "seed": self.cfg.seed,
            "test": test_report,
            "selected_round": self.best_round if self.cfg.student.select_best_round else self.cfg.federation.num_rounds,
            "teachers": {
                "mean_accuracy": last["teacher_mean_accuracy"],
                "mean_worst_group_accuracy": last["teacher_mean_worst_group_accuracy"],
                "best_worst_group_accuracy": max(t["test_worst_group_accuracy"] for t in last["teachers"]),
                "worst_worst_group_accuracy": min(t["test_worst_group_accuracy"] for t in last["teachers"]),
                **two_group_teachers(baselines),
            },
            "baselines": baselines,
            **run_columns,
            "wall_seconds": wall_seconds,
            "provenance": provenance(),
        }
        self.run_dir.write_summary(summary)
        return summary


def two_group_teachers(baselines: dict) -> dict:
    """The teachers' mean two-group (aligned / conflicting) worst-group accuracy, from the ensemble baseline's
    answers of each teacher on the test split, where the benchmark has a bias attribute and the ensemble ran."""
    members = baselines.get("ensemble", {}).get("members", [])
    if not members or "two_group_worst_group_accuracy" not in members[0]:
        return {}
    return {"mean_two_group_worst_group_accuracy":
            float(np.mean([m["two_group_worst_group_accuracy"] for m in members]))}
