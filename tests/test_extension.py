"""Adding a method is one class (or module) behind a registry and one YAML file: shown with an aggregator that
exists only in this test, its YAML in a config folder of its own (Hydra's search path), nothing else touched."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from clients.app import app as client_app
from fedkd.aggregators import AGGREGATORS, FixedAggregator
from fedkd.config import AggregatorConfig, ConfigError, rule
from fedkd.results import read_metrics
from fedkd.soft_labels import AggregationInputs, tempered_probs
from fedkd.validation import load_run_config
from server.app import run_federation
from server.inprocess import InProcessGrid

TINY = ["federation.num_clients=3", "federation.num_rounds=1", "teacher.epochs=1", "student.epochs=1",
        "baselines.ensemble=false", "baselines.server_only=false"]


@dataclass(frozen=True)
class TrimmedMeanConfig(AggregatorConfig):
    trim: int = field(default=1, metadata=rule(lambda v: v >= 0, "must be >= 0"))  # teachers cut at each end


class TrimmedMean(FixedAggregator):
    """Per class, the mean of the teachers' probabilities without the ``trim`` largest and smallest, renormalised."""

    def aggregate(self, inputs: AggregationInputs) -> torch.Tensor:
        probs = tempered_probs(inputs.teacher_logits, inputs.temperature).sort(dim=0).values
        kept = probs[self.cfg.trim: len(probs) - self.cfg.trim].mean(0)
        return kept / kept.sum(-1, keepdim=True)


@pytest.fixture
def trimmed_mean(tmp_path):
    """The two pieces a new aggregator is: its registered class and its YAML."""
    AGGREGATORS.register("trimmed_mean", params=TrimmedMeanConfig)(TrimmedMean)
    conf = tmp_path / "conf"
    (conf / "aggregator").mkdir(parents=True)
    (conf / "aggregator" / "trimmed_mean.yaml").write_text("name: trimmed_mean\ntrim: 1\n")
    try:
        yield [f"hydra.searchpath=[file://{conf}]", "aggregator=trimmed_mean"]
    finally:
        del AGGREGATORS["trimmed_mean"]
        del AGGREGATORS.param_classes["trimmed_mean"]


def test_a_new_aggregator_runs_from_its_class_and_yaml_alone(tmp_path, trimmed_mean, monkeypatch):
    """The round distils from the new class's targets: it is handed the 3 teachers' answers on every queried
    point, and the student is trained on what it returns."""
    seen, aggregate = [], TrimmedMean.aggregate

    def recording(self, inputs: AggregationInputs) -> torch.Tensor:
        targets = aggregate(self, inputs)
        seen.append((tuple(inputs.teacher_logits.shape), tuple(targets.shape)))
        return targets

    monkeypatch.setattr(TrimmedMean, "aggregate", recording)
    cfg = load_run_config([*trimmed_mean, *TINY, f"runs_dir={tmp_path / 'runs'}"])
    assert isinstance(cfg.aggregator, TrimmedMeanConfig) and cfg.aggregator.trim == 1
    assert cfg.name == "cmnist_trimmed_mean_s0"
    summary = run_federation(InProcessGrid(client_app, 3), cfg)
    (record,) = read_metrics(summary["run_dir"])
    assert record["aggregator"] == "trimmed_mean"
    points = record["query"]["num_new"]
    assert points > 0 and seen == [((3, points, 10), (points, 10))]
    per_group = record["test"]["per_group_accuracy"]
    assert record["test"]["worst_group_accuracy"] == min(per_group.values()) == per_group[record["test"]["worst_group"]]


def test_the_trimmed_mean_keeps_the_middle_teacher():
    probs = torch.tensor([[[0.9, 0.1]], [[0.6, 0.4]], [[0.2, 0.8]]])
    aggregator = TrimmedMean(TrimmedMeanConfig(name="trimmed_mean", trim=1))
    aggregator.prepare(AggregationInputs(torch.log(probs), 1.0, torch.ones(3, 2)))
    assert torch.allclose(aggregator.q, torch.tensor([[0.6, 0.4]]))


def test_the_new_parameters_are_validated_like_the_built_in_ones(trimmed_mean):
    with pytest.raises(ConfigError, match=r"aggregator\.trim = -1: must be >= 0"):
        load_run_config([*trimmed_mean, *TINY, "aggregator.trim=-1"])
    with pytest.raises(ConfigError, match=r"aggregator\.trim = 1\.5: must be a whole number"):
        load_run_config([*trimmed_mean, *TINY, "aggregator.trim=1.5"])
    with pytest.raises(ConfigError, match=r"aggregator\.era_temperature.*unknown key"):
        load_run_config([*trimmed_mean, *TINY, "+aggregator.era_temperature=0.5"])
