"""Bad input gets one clear error naming the key, before any process starts."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from fedkd.config import AggregatorConfig, ConfigError, parse_section, positive
from fedkd.field_types import UnsupportedType, field_types, spell
from fedkd.registry import Registry
from fedkd.validation import client_job, load_run_config, parse_client_job


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["dataset=imagenet"], "dataset"),
        (["dataset.name=imagenet"], "dataset.name"),
        (["aggregator=median"], "aggregator"),
        (["aggregator.name=median"], "aggregator.name"),
        (["dataset.bias_ratio=1.0"], "dataset.bias_ratio"),
        (["dataset.bias_ratio=0"], "dataset.bias_ratio"),
        (["dataset.bias_ratio=1.5"], "dataset.bias_ratio"),
        (["federation.num_clients=100000"], "federation.num_clients"),
        (["federation.num_clients=0"], "federation.num_clients"),
        (["federation.num_clients=-2"], "federation.num_clients"),
        (["federation.num_rounds=0"], "federation.num_rounds"),
        (["federation.num_rounds=-1"], "federation.num_rounds"),
        (["student.temperature=0"], "student.temperature"),
        (["student.temperature=-1.5"], "student.temperature"),
        (["teacher.arch=resnet9000"], "teacher.arch"),
        (["+dataset.bias_ratoi=0.9"], "dataset.bias_ratoi"),
        (["teacher.lr=fast"], "teacher.lr"),
        (["federation.num_rounds=2.5"], "federation.num_rounds"),
        (["partition=dirichlet", "partition.alpha=0"], "partition.alpha"),
        (["query=bald"], "query"),
        (["query=random", "query.per_round=0"], "query.per_round"),
        (["query=random", "query.per_round=2.5"], "query.per_round"),
        (["query=random", "query.total=-1"], "query.total"),
        (["query.per_round=0.5"], "query.per_round"),
        (["query.compression=zip"], "query.compression"),
        (["query.compression=topk", "query.top_k=10"], "query.top_k"),
        (["query.top_k=0"], "query.top_k"),
        (["student.min_steps=-1"], "student.min_steps"),
        (["student.min_steps=2.5"], "student.min_steps"),
        (["teacher.lr=inf"], "teacher.lr"),  # non-finite floats silently gave NaN losses
        (["dataset.color_std=nan"], "dataset.color_std"),
        (["dataset=mnist_lt", "dataset.imbalance=inf"], "dataset.imbalance"),
        (["aggregator=mean", "+aggregator.biased=fixed_client"], "aggregator.biased"),  # another choice's key
        (["student.beta=0.7"], "student.beta"),  # a robust_kd key on the kd student
        (["aggregator=agre", "aggregator.biased=fixed_client", "aggregator.biased_client=10"],
         "aggregator.biased_client"),
    ],
)
def test_bad_values_name_their_key(overrides, key):
    with pytest.raises(ConfigError) as info:
        load_run_config(overrides)
    assert key in str(info.value)


def test_defaults_are_valid_and_round_trip_to_clients():
    cfg = load_run_config([])
    assert cfg.dataset.name == "cmnist" and cfg.federation.num_clients == 10
    # the default pipeline (docs/results.md): AGRE-KD against the mean of the ERM bases, prior-corrected
    assert (cfg.aggregator.name, cfg.aggregator.biased, cfg.aggregator.prior_correction) == ("agre", "mean_bases", True)
    job = client_job(cfg)
    assert job.erm_base  # AGRE-KD asks for the ERM bases
    assert parse_client_job(job.to_yaml()) == job


def test_client_job_round_trips_with_component_parameters():
    """Each section of the job comes back as its component's own parameter class, values included."""
    cfg = load_run_config(["teacher=dfr", "teacher.dfr_subsets=7", "partition=dirichlet", "partition.alpha=2.0",
                           "dataset=mnist_lt", "dataset.imbalance=5"])
    job = parse_client_job(client_job(cfg).to_yaml())
    assert (type(job.teacher).__name__, job.teacher.dfr_subsets) == ("DfrTeacherConfig", 7)
    assert (type(job.partition).__name__, job.partition.alpha) == ("DirichletConfig", 2.0)
    assert (type(job.dataset).__name__, job.dataset.imbalance) == ("MnistLongTailConfig", 5.0)
    assert job == client_job(cfg)


def test_cli_rejects_bad_input_before_starting_anything(tmp_path):
    """The `fedkd` command exits 2 with the key in the message, quickly, and creates no run directory."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "fedkd", "federation.num_rounds=0", f"runs_dir={tmp_path}"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "federation.num_rounds" in proc.stdout + proc.stderr
    assert "ray" not in (proc.stdout + proc.stderr).lower()
    assert list(tmp_path.iterdir()) == []
    assert time.perf_counter() - start < 60


def test_registry_refuses_duplicates_and_names_the_known_entries():
    from fedkd.aggregators import AGGREGATORS

    with pytest.raises(KeyError, match="registered twice"):
        AGGREGATORS.register("mean")(object)
    with pytest.raises(KeyError, match=r"unknown aggregator 'median'; known: \[.*'mean'.*\]"):
        AGGREGATORS["median"]


@dataclass(frozen=True)
class EveryFieldType:
    """A parameter dataclass with each kind of annotation a component may use."""

    flag: bool = False
    count: int = field(default=1, metadata=positive())
    rate: float = 0.5
    label: str = "a"
    cap: float | None = field(default=None, metadata=positive())  # the rule judges a set value only
    limit: Optional[int] = None  # noqa: UP045 - the spelling under test
    sizes: list[int] = field(default_factory=list)
    weights: tuple[float, ...] = ()
    pair: tuple[int, str] = (0, "x")
    mode: Literal["fast", "slow"] = "fast"


@pytest.mark.parametrize(
    ("key", "good"),
    [("flag", True), ("count", 3), ("rate", 2), ("rate", 0.25), ("label", "b"), ("cap", None), ("cap", 2.5),
     ("limit", None), ("limit", 4), ("sizes", [1, 2, 3]), ("sizes", []), ("weights", [0.5, 1]),
     ("pair", [3, "y"]), ("mode", "slow")],
)
def test_every_field_type_takes_its_values(key, good):
    parsed = parse_section("demo", {key: good}, EveryFieldType)
    assert getattr(parsed, key) == (tuple(good) if key in ("weights", "pair") else good)
    if key in ("weights", "pair"):
        assert isinstance(getattr(parsed, key), tuple)  # a frozen config with tuple fields stays hashable


@pytest.mark.parametrize(
    ("key", "bad", "why"),
    [("flag", 1, "must be true or false"),
     ("flag", "yes", "must be true or false"),
     ("count", True, "must be a whole number"),
     ("count", 2.5, "must be a whole number"),
     ("count", 2**63, "too large"),
     ("count", 0, "must be > 0"),
     ("rate", "fast", "must be a number"),
     ("rate", False, "must be a number"),
     ("rate", float("nan"), "must be a finite number"),
     ("label", 3, "must be a string"),
     ("cap", "big", "must be a number or null"),
     ("cap", float("inf"), "must be a finite number"),
     ("cap", -1.0, "must be > 0"),
     ("limit", 1.5, "must be a whole number or null"),
     ("sizes", 3, "must be a list whose every item is a whole number"),
     ("sizes", [1, "2"], "item 1 ('2') must be a whole number"),
     ("sizes", [1, None], "item 1 (None) must be a whole number"),
     ("weights", [0.5, float("inf")], "item 1 (inf) must be a finite number"),
     ("weights", "0.5", "must be a list"),
     ("pair", [1], "must be a list of 2 items: a whole number, a string (got 1 items)"),
     ("pair", ["a", "b"], "item 0 ('a') must be a whole number"),
     ("mode", "medium", "must be one of 'fast', 'slow'"),
     ("mode", 1, "must be one of 'fast', 'slow'")],
)
def test_every_field_type_refuses_a_bad_value_naming_the_key(key, bad, why):
    with pytest.raises(ConfigError) as info:
        parse_section("demo", {key: bad}, EveryFieldType)
    message = str(info.value)
    assert message.startswith(f"invalid config: demo.{key} = {bad!r}: ")
    assert why in message


def test_an_optional_float_parameter_of_a_shipped_component_is_validated():
    """privacy.epsilon is ``float | None``: null is accepted (σ given instead), a word is refused by key."""
    cfg = load_run_config(["privacy=central_gaussian", "privacy.epsilon=null", "privacy.noise_multiplier=2.0",
                           "query=random", "aggregator=mean"])
    assert cfg.privacy.epsilon is None and cfg.privacy.noise_multiplier == 2.0
    with pytest.raises(ConfigError, match=r"privacy\.noise_multiplier = 'loud': must be a number or null"):
        load_run_config(["privacy=central_gaussian", "privacy.noise_multiplier=loud"])


def test_a_component_with_a_type_the_validator_cannot_check_is_refused_at_registration():
    @dataclass(frozen=True)
    class MappingParams(AggregatorConfig):
        table: dict[str, int] = field(default_factory=dict)

    registry = Registry("demo", section="demo", params=AggregatorConfig)
    with pytest.raises(UnsupportedType, match=r"demo 'mapping': MappingParams\.table: the type dict"):
        registry.register("mapping", params=MappingParams)(object)
    assert "mapping" not in registry


@pytest.mark.parametrize(
    ("key", "written"),
    [("flag", "bool"), ("cap", "float | None"), ("limit", "int | None"), ("sizes", "list[int]"),
     ("weights", "tuple[float, ...]"), ("pair", "tuple[int, str]"), ("mode", "Literal['fast', 'slow']")],
)
def test_each_type_is_spelt_as_the_configuration_reference_shows_it(key, written):
    assert spell(field_types(EveryFieldType)[key]) == written
