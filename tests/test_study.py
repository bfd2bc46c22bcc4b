"""Studies: the study section's errors, what a rerun does with a job folder, the report's statistics and metrics
computed by hand, and a real study killed midway and rerun (only its unfinished jobs run; its report equals the
uninterrupted one's)."""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import FAST
from hydra.errors import HydraException

from fedkd.conf_dir import CONF_DIR, compose
from fedkd.report import main as report_main
from fedkd.study import Curve, StudyError, job_state, parse_study
from fedkd.study_report import answered_lines, build_study_report, curve_x, plot_curve, write_results_section
from fedkd.study_runs import (
    MethodGroup,
    StudyRun,
    answered_by_group,
    confidence_interval,
    paired,
    paper_rows,
    planned_jobs,
    reference_of,
    run_costs,
    server_only_pairs,
    setting_references,
)
from fedkd.subpop_metrics import subpopulation_metrics
from fedkd.validation import load_run_config, validate
from hydra_plugins.fedkd_study_sweeper.study_sweeper import cell_arguments

FEDKD = str(Path(sys.executable).parent / "fedkd")


@pytest.mark.parametrize(("raw", "message"), [
    ({"name": "a b"}, "study.name"),
    ({"name": "s", "methods": "x"}, "unknown key"),
    ({"name": "s", "seeds_of": {"reliability": [0, -1]}}, "study.seeds_of.reliability"),
    ({"name": "s", "seeds_of": {"reliability": []}}, "study.seeds_of.reliability"),
    ({"name": "s", "paper": [{"where": {"aggregator": "agre_fed"}, "value": 0.8}]}, "study.paper_metric"),
    ({"name": "s", "paper_metric": "accuracy", "paper": [{"where": {}, "value": float("nan")}]},
     "study.paper[0].value"),
    ({"name": "s", "paper_metric": "accuracy", "paper": [{"value": 0.5}]}, "study.paper[0]"),
])
def test_a_bad_study_section_is_one_error_naming_the_key(raw, message):
    with pytest.raises(StudyError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_study(raw)


def test_a_method_designed_on_some_seeds_runs_only_on_its_fresh_ones():
    study = parse_study({"name": "s", "seeds_of": {"reliability": [3, 4]}})
    assert study.runs_seed("mean", 0) and study.runs_seed("reliability", 3)
    assert not study.runs_seed("reliability", 0)
    assert planned_jobs(study, {"aggregator": "mean,reliability", "seed": "0,3"}, {}) == 3  # not reliability at 0
    cells = {"base": {}, "fresh": {"aggregator": "reliability", "seed": "3,4,5"}}
    assert planned_jobs(study, {"aggregator": "mean", "seed": "0,1"}, cells) == 2 + 3  # a cell's name is its label


def test_a_cell_adds_and_removes_axes_and_the_command_line_wins():
    params = {"aggregator": "mean", "dataset.bias_ratio": "0.98", "seed": "0,1,2"}
    cells = {"base": {"baselines.server_only": True}, "lt": {"dataset": "mnist_lt", "dataset.bias_ratio": None},
             "agre": {"aggregator": "agre"}}
    got = dict(cell_arguments(params, cells, None, ["seed=0"]))
    assert got["base"] == ["aggregator=mean", "dataset.bias_ratio=0.98", "seed=0,1,2", "baselines.server_only=True",
                           "seed=0"]  # Hydra's product keeps the last value of a key: the command line's
    assert got["lt"] == ["aggregator=mean", "seed=0,1,2", "dataset=mnist_lt", "seed=0"]  # null: the axis removed
    assert got["agre"][0] == "aggregator=agre"  # the cell's value replaces the shared one in place
    assert list(dict(cell_arguments(params, cells, ["lt"], []))) == ["lt"]
    # the command line narrows a cell's own axis, and drops a cell it leaves without a value
    active = {"all": {"query": "all", "query.compression": "fp32,fp16"},
              "b5": {"query": "random,margin,entropy", "query.total": 0.05}, "fresh": {"seed": "3,4,5"}}
    got = dict(cell_arguments({"seed": "0,1,2"}, active, None, ["query=random,rad", "seed=4,7"]))
    assert list(got) == ["b5", "fresh"]
    assert got["b5"] == ["seed=0,1,2", "query=random", "query.total=0.05", "seed=4,7"]  # a shared axis: replaced
    assert got["fresh"] == ["seed=4", "query=random,rad"]
    with pytest.raises(HydraException, match="no cell named"):
        cell_arguments(params, cells, ["nope"], [])
    with pytest.raises(HydraException, match="cell's name"):
        cell_arguments(params, {"a b": {}}, None, [])


def test_a_method_of_several_axes_is_paired_with_the_reference_in_its_own_setting():
    study = parse_study({"name": "s", "method": ["aggregator", "student"], "reference": {"aggregator": "mean"}})

    def group(**overrides):
        return MethodGroup("", overrides, [StudyRun(None, overrides, 0, {}, {}, {})])

    base, lt = group(aggregator="mean", bias="0.98"), group(aggregator="mean", bias="0.99")
    robust, robust_lt = group(aggregator="mean", student="robust_kd", bias="0.98"), group(aggregator="agre",
                                                                                           bias="0.99")
    groups = [base, lt, robust, robust_lt]
    assert reference_of(study, robust, groups) is base and reference_of(study, robust_lt, groups) is lt
    assert reference_of(study, base, groups) is None  # the reference itself
    assert study.label({"aggregator": "mean", "student": "robust_kd", "bias": "0.98"}) == \
        "aggregator=mean student=robust_kd"
    assert study.setting_of({"aggregator": "agre", "baselines.server_only": "true", "bias": "0.99"}) == {"bias": "0.99"}
    with pytest.raises(StudyError, match="study.reference"):
        parse_study({"name": "s", "method": ["aggregator"], "reference": {"teacher": "dfr"}})


def test_the_seeds_a_method_was_designed_on_are_named():
    study = parse_study({"name": "s", "reference": "mean",
                         "designed_on": [{"where": {"aggregator": "reliability"}, "seeds": [0, 1]}]})
    assert study.design_seed({"aggregator": "reliability", "x": "1"}, 1)
    assert not study.design_seed({"aggregator": "reliability"}, 2) and not study.design_seed({"aggregator": "mean"}, 0)
    with pytest.raises(StudyError, match=r"study.designed_on\[0\]"):
        parse_study({"name": "s", "designed_on": [{"where": {}, "seeds": [0]}]})


def test_the_references_are_computed_on_the_reference_methods_jobs_where_a_rule_says():
    study = parse_study({"name": "s", "method": ["aggregator", "student"], "reference": {"aggregator": "mean"},
                         "references": [{"where": {}, "baselines": {"server_only": True}},
                                        {"where": {"partition": None}, "baselines": {"centralized": True}},
                                        {"where": {"bias": "0.95"}, "baselines": {"server_only": False}}]})
    assert study.baselines_of({"aggregator": "mean", "bias": "0.99"}) == {"server_only": True, "centralized": True}
    assert study.baselines_of({"aggregator": "mean", "partition": "dirichlet"}) == {"server_only": True}  # null: absent
    assert study.baselines_of({"aggregator": "mean", "bias": "0.95"}) == {"server_only": False, "centralized": True}
    assert study.baselines_of({"aggregator": "mean", "student": "robust_kd"}) == {}  # not the reference method
    assert study.baselines_of({"aggregator": "agre"}) == {}
    with pytest.raises(StudyError, match="study.references"):
        parse_study({"name": "s", "references": [{"where": {}, "baselines": {"server_only": True}}]})  # no reference
    with pytest.raises(StudyError, match=r"study.references\[0\]"):
        parse_study({"name": "s", "reference": "mean", "references": [{"where": {}, "baselines": {"oracle": True}}]})


def test_a_study_section_of_the_results_file_is_replaced_and_the_others_kept(tmp_path):
    report = tmp_path / "docs" / "studies" / "s" / "report.md"
    report.parent.mkdir(parents=True)
    results = tmp_path / "docs" / "results.md"
    results.write_text("# Results\n\n<!-- other:begin -->\nkept\n<!-- other:end -->\n")
    for value in ("0.5", "0.7"):
        report.write_text(f"# Study `s`\n\n3 runs.\n\n## Final students\n\n| a | {value} |\n\n"
                          "## Paired differences\n\nx\n")
        write_results_section(results, report, "fedkd report studies/s --results docs/results.md")
    text = results.read_text()
    assert "kept" in text and text.count("<!-- study:s:begin -->") == 1 and "| a | 0.7 |" in text
    assert "| a | 0.5 |" not in text and "Paired differences\n\nx" not in text  # only the headline sections
    assert "(studies/s/report.md)" in text and "![s](studies/s/report.png)" in text  # links relative to results.md


def test_a_curve_places_each_group_by_its_axis_or_its_cost_and_draws_the_others_as_levels(tmp_path):
    study = parse_study({"name": "s", "method": ["privacy", "privacy.epsilon"], "reference": {"privacy": "none"},
                         "curve": {"x": "privacy.epsilon", "series": ["privacy"], "log_x": True}})
    assert study.curve == Curve("privacy.epsilon", ["privacy"], [], True)

    def group(overrides, costs, wga):
        runs = [StudyRun(None, overrides, seed, {"accuracy": w, "worst_group_accuracy": w}, {}, {}, None, c)
                for seed, (c, w) in enumerate(zip(costs, wga, strict=True))]
        return MethodGroup("", overrides, runs)

    private = group({"privacy": "dpsgd", "privacy.epsilon": "2.0"}, [{"soft labels / teacher": 40},
                                                                    {"soft labels / teacher": 60}], [0.3, 0.5])
    none = group({"privacy": "none"}, [{}, {}], [0.6, 0.7])
    assert curve_x(study.curve, private) == 2.0 and curve_x(study.curve, none) is None  # no ε: a level, not a point
    assert curve_x(Curve("soft labels / teacher", []), private) == 50.0  # a cost: its mean over seeds
    plot_curve(study, [private, none], tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 0
    with pytest.raises(StudyError, match="study.curve"):
        parse_study({"name": "s", "curve": {"x": "privacy.epsilon", "series": "privacy"}})


def test_a_paper_number_stands_beside_the_method_it_names_not_a_variant_of_it():
    study = parse_study({"name": "s", "method": ["aggregator", "aggregator.tolerance"], "paper_metric": "accuracy",
                         "paper": [{"where": {"aggregator": "aekd", "bias": 0.99}, "value": 0.5}]})

    def group(**overrides):
        return MethodGroup("", overrides, [StudyRun(None, overrides, 0, {}, {}, {})])

    variant = group(aggregator="aekd", **{"aggregator.tolerance": "1"}, bias="0.99")
    default, other = group(aggregator="aekd", bias="0.99"), group(aggregator="aekd", bias="0.95")
    ((where, value, ours, match),) = paper_rows(study, [variant, other, default])
    assert match is default and value == 0.5 and where == "aggregator=aekd bias=0.99" and ours == []
    # a reference row: the setting's reference, whichever method's job carries it (the reference method's first)
    study = parse_study({"name": "s", "reference": "mean", "paper_metric": "two_group_worst_group_accuracy",
                         "paper": [{"where": {"bias": 0.99}, "reference": "centralized_erm", "value": 0.2}]})
    key = "centralized_erm two-group WGA"
    mean = MethodGroup("", {}, [StudyRun(None, {"aggregator": "mean", "bias": "0.99"}, s, {}, {}, {key: v})
                                for s, v in ((0, 0.5), (1, 0.7))])
    agre = MethodGroup("", {}, [StudyRun(None, {"aggregator": "agre", "bias": "0.99"}, 2, {}, {}, {key: 0.9})])
    far = MethodGroup("", {}, [StudyRun(None, {"aggregator": "mean", "bias": "0.95"}, 0, {}, {}, {key: 0.1})])
    ((where, value, ours, match),) = paper_rows(study, [agre, far, mean])
    assert where == "bias=0.99 (centralized_erm)" and sorted(ours) == [0.5, 0.7, 0.9] and match is None


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "study").glob("[!_]*.yaml")))
def test_every_study_parses_and_each_of_its_cells_composes_a_valid_job(name):
    """Each cell's first and last job, as the study sweeper makes them, composed from conf/ and validated."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    study = yaml.safe_load((CONF_DIR / "study" / f"{name}.yaml").read_text())
    sweeper = study["hydra"]["sweeper"]
    params = {k: str(v) for k, v in sweeper["params"].items()}
    cells = cell_arguments(params, sweeper.get("cells") or {"grid": {}}, None, [])
    parser = OverridesParser.create()
    for _, arguments in cells:
        jobs = BasicSweeper.split_arguments(parser.parse_overrides(arguments), None)[0]
        for job in {tuple(jobs[0]), tuple(jobs[-1])}:
            raw = compose([f"+study={name}", *job])
            parse_study(raw.pop("study"))
            validate(raw)


def test_a_job_folder_name_fits_the_file_system_and_stays_one_per_job(tmp_path):
    from omegaconf import OmegaConf

    from fedkd.study import JOB_DIR_BYTES, job_dir_name

    short = "aggregator=vote,privacy=none,seed=0"
    assert job_dir_name(short) == short
    smooth = ",".join(f"privacy.smooth_sensitivity_{k}={v}" for k, v in (("beta", 0.0329), ("order", 14)))
    long = f"aggregator=vote,dataset.imbalance=1,privacy.epsilon=null,{smooth},{'x' * 150}"
    other = long.replace("order=14", "order=15")
    names = {job_dir_name(long), job_dir_name(other)}
    assert len(names) == 2 and all(len(n.encode()) <= JOB_DIR_BYTES for n in names)
    assert job_dir_name(long) == job_dir_name(long) and job_dir_name(long).startswith("aggregator=vote,")
    (tmp_path / job_dir_name(long)).mkdir()  # a folder the file system takes
    # the study sweep names its job folders through it (conf/study/_sweep.yaml)
    import fedkd.cli  # noqa: F401  (registers the resolver, as it does in a launcher's worker)

    sweep = yaml.safe_load((CONF_DIR / "study" / "_sweep.yaml").read_text())["hydra"]["sweep"]
    cfg = OmegaConf.create({"hydra": {"job": {"override_dirname": long}, "sweep": sweep}})
    assert cfg.hydra.sweep.subdir == job_dir_name(long)


def test_a_job_folder_is_new_finished_resumed_or_restarted_and_never_overwritten(tmp_path):
    config = load_run_config(["teacher_store_dir=a"])
    written = yaml.safe_load(yaml.safe_dump(config.to_dict()))
    folder = tmp_path / "job"
    assert job_state(folder, config) == "new"
    folder.mkdir()
    assert job_state(folder, config) == "new"
    (folder / "config.yaml").write_text(yaml.safe_dump({**written, "teacher_store_dir": "elsewhere"}))
    assert job_state(folder, config) == "restart"  # where teachers are shared from changes no result
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "server.pt").write_bytes(b"")
    assert job_state(folder, config) == "resume"
    (folder / "summary.json").write_text("{}")
    assert job_state(folder, config) == "finished"
    with pytest.raises(StudyError, match="another config"):
        job_state(folder, dataclasses.replace(config, seed=1))


def test_a_job_written_before_a_field_existed_is_the_same_job_while_the_field_keeps_its_default(tmp_path):
    """A run written by code without ``student.unlabeled`` and ``dataset.val_reserve_per_class`` (fields whose
    defaults keep the old behaviour) is skipped when rerun at those defaults, and refused at any other value; a
    field without a default is never filled in."""
    config = load_run_config([])
    older = yaml.safe_load(yaml.safe_dump(config.to_dict()))
    del older["student"]["unlabeled"], older["dataset"]["val_reserve_per_class"]
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(older))
    (folder / "summary.json").write_text("{}")
    assert job_state(folder, config) == "finished"
    for changed in (dataclasses.replace(config, student=dataclasses.replace(config.student, unlabeled="vat")),
                    dataclasses.replace(config, dataset=dataclasses.replace(config.dataset,
                                                                            val_reserve_per_class=500))):
        with pytest.raises(StudyError, match="another config"):
            job_state(folder, changed)
    del older["student"]["lr"]  # no default: a run without it is not this job
    (folder / "config.yaml").write_text(yaml.safe_dump(older))
    with pytest.raises(StudyError, match="another config"):
        job_state(folder, config)


def test_the_confidence_interval_and_the_paired_differences_by_hand():
    low, high = confidence_interval([0.5, 0.7, 0.9])
    half = 4.302652729749462 * 0.2 / math.sqrt(3)  # t(0.975, 2) * s / sqrt(n)
    assert low == pytest.approx(0.7 - half, abs=1e-12) and high == pytest.approx(0.7 + half, abs=1e-12)
    assert all(math.isnan(v) for v in confidence_interval([0.5]))

    def group(label, values):
        runs = [StudyRun(None, {"aggregator": label}, seed, {"worst_group_accuracy": v}, {}, {})
                for seed, v in values.items()]
        return MethodGroup(label, {"aggregator": label}, runs)

    ours = group("agre_fed", {0: 0.60, 1: 0.70, 2: 0.50, 5: 0.9})
    reference = group("mean", {0: 0.55, 1: 0.60, 2: 0.50, 3: 0.1})
    result = paired(ours, reference, "worst_group_accuracy")
    assert result.seeds == [0, 1, 2]  # only the seeds both ran: seeds 3 and 5 have no partner
    assert result.differences == pytest.approx([0.05, 0.10, 0.0])
    assert result.mean == pytest.approx(0.05)
    half = 4.302652729749462 * 0.05 / math.sqrt(3)  # the differences' sample std is 0.05
    assert (result.low, result.high) == pytest.approx((0.05 - half, 0.05 + half))


def test_each_method_is_paired_with_the_server_only_models_of_its_own_setting_seed_by_seed():
    """The server-only models sit on the reference method's jobs, once per setting and seed; every method of that
    setting is compared with them on the seeds both have, and another setting's are never used."""
    study = parse_study({"name": "s", "reference": "mean", "references": [{"where": {}, "baselines":
                                                                            {"server_only": True}}]})

    def run(aggregator, bias, seed, wga, references):
        return StudyRun(None, {"aggregator": aggregator, "bias": bias}, seed,
                        {"two_group_worst_group_accuracy": wga}, {}, references)

    refs = {0: {"server_only two-group WGA": 0.80, "server_only_balanced two-group WGA": 0.70,
                "ensemble two-group WGA": 0.99},
            1: {"server_only two-group WGA": 0.90, "server_only_balanced two-group WGA": 0.75}}
    mean = MethodGroup("mean", {}, [run("mean", "0.95", s, 0.85, refs[s]) for s in (0, 1)])
    agre = MethodGroup("agre", {}, [run("agre", "0.95", 0, 0.86, {}), run("agre", "0.95", 1, 0.84, {}),
                                    run("agre", "0.95", 2, 0.99, {})])
    other = MethodGroup("mean", {}, [run("mean", "0.99", 0, 0.5, {"server_only two-group WGA": 0.1})])
    references = setting_references(study, [agre, mean, other])
    pairs = server_only_pairs(study, references, agre)
    assert set(pairs) == {"server_only", "server_only_balanced"}  # not the ensemble: it is no server-only model
    plain = pairs["server_only"]["two_group_worst_group_accuracy"]
    assert plain.seeds == [0, 1] and plain.differences == pytest.approx([0.86 - 0.80, 0.84 - 0.90])
    balanced = pairs["server_only_balanced"]["two_group_worst_group_accuracy"]
    assert balanced.differences == pytest.approx([0.16, 0.09]) and balanced.mean == pytest.approx(0.125)
    assert set(pairs["server_only"]) == {"two_group_worst_group_accuracy"}  # no accuracy reference, no pair
    assert server_only_pairs(study, references, other)["server_only"][
        "two_group_worst_group_accuracy"].differences == pytest.approx([0.4])  # its own setting's model

def test_who_a_threshold_refuses_is_counted_per_group_over_rounds_and_seeds_and_every_epsilon_named(tmp_path):
    def record(aligned, conflicting, refused=None, pool=10):  # 10 votes a round; the pool's count is cumulative
        answered = aligned[1] + conflicting[1]
        return {"query": {"soft_labels_queried": pool, "answered": answered,
                          "refused": 10 - answered if refused is None else refused,
                          "per_group": {"aligned": dict(zip(("asked", "answered", "correct"), aligned, strict=True)),
                                        "conflicting": dict(zip(("asked", "answered", "correct"), conflicting,
                                                                strict=True))}}}

    seed0 = [record((6, 5, 5), (4, 1, 0)), record((7, 6, 6), (3, 0, 0), pool=20)]
    assert answered_by_group(seed0) == {"aligned": (13, 11, 11), "conflicting": (7, 1, 0)}
    assert answered_by_group([record((6, 6, 5), (4, 4, 1), refused=0)]) == {}  # nothing refused: no view
    seed1 = [record((5, 3, 2), (5, 1, 1))]
    runs = [StudyRun(None, {"privacy": "gnmax"}, seed, {}, {}, {}, answered=answered_by_group(r))
            for seed, r in enumerate((seed0, seed1))]
    other_data = StudyRun(None, {}, 0, {}, {}, {}, answered={"class0": (4, 0, 0)})
    lines = answered_lines([MethodGroup("gnmax", {}, runs), MethodGroup("none", {}, [StudyRun(None, {}, 0, {}, {},
                                                                                                {})]),
                            MethodGroup("lt", {}, [other_data])])
    # pooled: aligned 14 of 18 answered, 13 of them right; conflicting 2 of 12, 1 right
    assert "| `gnmax` | 0.78 · 0.93 | 0.17 · 0.50 |" in lines and not any("`none`" in line for line in lines)
    assert "| group | aligned | conflicting |" in lines and "| group | class0 |" in lines  # a table per dataset
    assert "| `lt` | 0.00 · – |" in lines
    summary = {"epsilon_spent": 3.0, "privacy": {"epsilon_data_dependent_classic": 1.6, "smooth_sensitivity": {
        "epsilon_released": 2.1, "epsilon_expected": 2.2, "noise_std": 0.2}}}
    costs = run_costs(summary, tmp_path, seed0)
    assert costs["answered / asked"] == pytest.approx(12 / 20)  # the votes of both rounds, not the pool's 10 + 20
    assert (costs["ε spent (guarantee)"], costs["ε data-dependent, classic (not releasable)"],
            costs["ε released (smooth sensitivity)"], costs["ε released: expected"],
            costs["ε released: noise std"]) == (3.0, 1.6, 2.1, 2.2, 0.2)
    assert set(run_costs({}, tmp_path)) == set()


def test_the_subpopulation_metrics_by_hand():
    y = np.array([0, 0, 1, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 0, 2])
    g = np.array([0, 1, 2, 2, 3, 4])
    probabilities = np.full((6, 3), 0.125)
    probabilities[np.arange(6), pred] = 0.75
    m = subpopulation_metrics(y, g, pred, probabilities, 3, train_group_counts=np.array([1, 1, 2, 0, 4]))
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["worst_group_accuracy"] == 0.0 and m["mean_group_accuracy"] == pytest.approx(3 / 5)
    assert m["class_balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert m["worst_class_accuracy"] == pytest.approx(1 / 2)  # recall of class 0
    assert m["worst_class_precision"] == pytest.approx(1 / 2)  # predicted 0 twice, right once
    assert m["worst_class_f1"] == pytest.approx(1 / 2)
    assert m["train_weighted_accuracy"] == pytest.approx(1 / 8 + 0 + 2 / 8 + 4 / 8)  # group 3 has no training weight
    assert m["ece"] == pytest.approx(abs(4 / 6 - 0.75))  # every confidence 0.75: one bin
    # one-vs-rest AUROC by the Mann-Whitney count: P(score of a positive > score of a negative), ties half
    aurocs = []
    for c in range(3):
        pos, neg = probabilities[y == c, c], probabilities[y != c, c]
        wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
        aurocs.append(wins / (len(pos) * len(neg)))
    assert m["auroc"] == pytest.approx(np.mean(aurocs))


def _study_command(sweep_dir: str, cells: bool = False) -> list[str]:
    """The aggregators study on three aggregators, as one grid or (``cells``) as two named cells making the same
    three jobs."""
    grid = (["+hydra.sweeper.cells.reference={aggregator:mean}", '+hydra.sweeper.cells.others={aggregator:"vote,'
             'random"}'] if cells else ["aggregator=mean,vote,random",
                                        "+study.designed_on=[{where:{aggregator:random},seeds:[0]}]"])
    return [FEDKD, "-m", "+study=aggregators", *grid, "seed=0", "study.references=[]",
            *[o for o in FAST if not o.startswith(("aggregator=", "federation.client_cpus="))],
            f"hydra.sweep.dir={sweep_dir}"]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def test_a_killed_study_reruns_only_its_unfinished_jobs_and_reports_the_same_numbers(tmp_path):
    """The uninterrupted study is one grid, the killed one two cells making the same jobs."""
    whole = subprocess.run(_study_command("whole"), cwd=tmp_path, env=_env(), capture_output=True, text=True,
                           timeout=600)
    assert whole.returncode == 0, whole.stdout[-3000:] + whole.stderr[-3000:]
    killed_dir = tmp_path / "killed"
    killed = _study_command("killed", cells=True)
    process = subprocess.Popen(killed, cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        # kill while the second job (vote) is between its first and its last round; the third has not started
        while time.monotonic() < deadline:
            summaries = list(killed_dir.glob("*/summary.json"))
            checkpoints = [p for p in killed_dir.glob("*/checkpoints/server.pt")
                           if not (p.parent.parent / "summary.json").exists()]
            if len(summaries) == 1 and checkpoints:
                break
            assert process.poll() is None, "the study finished before it could be killed"
            time.sleep(0.02)
        else:
            pytest.fail("the study never reached its second job's first checkpoint")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert len(list(killed_dir.glob("*/summary.json"))) == 1
    rerun = subprocess.run(killed, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert rerun.stdout.count("finished before, skipped") == 1
    assert rerun.stdout.count("fedkd: resuming directory") == 1
    assert rerun.stdout.count("fedkd: run directory") == 1
    _, whole_files = build_study_report(tmp_path / "whole", tmp_path / "whole_report")
    _, killed_files = build_study_report(killed_dir, tmp_path / "killed_report")
    def rows(path):  # report.csv (every metric of every job) without the group's name
        return [line.split(",", 1)[1] for line in path.read_text().splitlines()]

    assert sorted(rows(killed_files[1])) == sorted(rows(whole_files[1]))
    whole_text = whole_files[0].read_text()
    assert "paired Δ" in whole_text and "| `vote` | 1 | 0 |" in whole_text
    assert "| `random (design seeds: no evidence)` | 1 | 0 |" in whole_text  # its design seed, reported apart
    assert "the study's whole grid holds 15 jobs" in whole_text  # 5 aggregators x 3 seeds; the command ran 3
    text = killed_files[0].read_text()
    assert "| `others aggregator=vote` | 1 | 0 |" in text and "| `reference` | 1 | 0 |" in text
    assert "the study's whole grid holds 9 jobs" in text  # (mean; vote, random) x 3 seeds
    results = tmp_path / "docs" / "results.md"  # the command that writes a study's section of the results file
    assert report_main([str(killed_dir), "--out", str(tmp_path / "docs" / "killed"), "--results", str(results)]) == 0
    assert "<!-- study:aggregators:begin -->" in results.read_text() and "(killed/report.md)" in results.read_text()
    assert report_main([str(killed_dir / "nope"), "--results", str(results)]) == 2  # a section is a study's
    assert "(reference)" in text.split("`reference`", 1)[1].splitlines()[0]
    # a fresh clone holds only the files .gitignore keeps of a study: its report is the same
    kept = [line.split("/")[-1] for line in (Path(__file__).parent.parent / ".gitignore").read_text().splitlines()
            if line.startswith(("!studies/*/*/", "!studies/*/study.yaml"))]
    assert {"summary.json", "subpopulation.json", "study.yaml"} <= set(kept)
    from_git = tmp_path / "from_git"
    for path in (tmp_path / "whole").rglob("*"):
        if path.is_file() and path.name in kept:
            (from_git / path.relative_to(tmp_path / "whole")).parent.mkdir(parents=True, exist_ok=True)
            (from_git / path.relative_to(tmp_path / "whole")).write_bytes(path.read_bytes())
    assert not list(from_git.rglob("predictions.csv"))
    _, git_files = build_study_report(from_git, tmp_path / "from_git_report")
    assert git_files[1].read_text() == whole_files[1].read_text()
    next(from_git.glob("*/subpopulation.json")).unlink()  # a folder kept before the report ran
    with pytest.raises(FileNotFoundError, match="holds neither predictions.csv nor subpopulation.json"):
        build_study_report(from_git, tmp_path / "from_git_report")
