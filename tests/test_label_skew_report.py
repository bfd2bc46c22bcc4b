"""bench/label_skew_study.py's report: rows are compared only on one set of teachers per (setting, seed), and the
acceptance line reads the paired differences the rows give. Rows are written by hand, nothing is trained."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import label_skew_study as study  # noqa: E402


def _row(setting: str, method: str, seed: int, fingerprint: str, accuracy: float, wga: float) -> dict:
    return {"cell": f"{setting} | {method}", "method": method, "seed": seed, "teachers_fingerprint": fingerprint,
            "accuracy": accuracy, "worst_group_accuracy": wga}


def test_rows_on_other_teachers_are_never_paired():
    rows = [_row("cmnist 0.99 | 0.3", "mean", 0, "old", 0.50, 0.40),  # another machine's teachers
            _row("cmnist 0.99 | 0.3", "mean", 0, "new", 0.70, 0.60),
            _row("cmnist 0.99 | 0.3", "reliability", 0, "new", 0.80, 0.75),
            _row("cmnist 0.99 | 0.3", "reliability", 1, "other", 0.90, 0.90)]  # no mean on its teachers
    paired = study.paired_rows(rows)
    assert paired[("cmnist 0.99", "0.3", 0)]["mean"]["accuracy"] == 0.70
    (seed, d_acc, d_wga), = study.paired_differences(paired, "cmnist 0.99", "0.3", "reliability")
    assert seed == 0 and d_acc == pytest.approx(10.0) and d_wga == pytest.approx(15.0)


def _acceptance_rows(gains: dict[int, tuple[tuple[float, float], tuple[float, float]]]) -> list[dict]:
    """seed -> ((Δ accuracy, Δ WGA) at Dirichlet 0.3, the same under IID) of `reliability` over the mean."""
    rows = []
    for seed, (skew, iid) in gains.items():
        rows += [_row("cmnist 0.99 | 0.3", "mean", seed, f"s{seed}", 0.7, 0.6),
                 _row("cmnist 0.99 | 0.3", "reliability", seed, f"s{seed}", 0.7 + skew[0], 0.6 + skew[1]),
                 _row("cmnist 0.99 | iid", "mean", seed, f"i{seed}", 0.8, 0.7),
                 _row("cmnist 0.99 | iid", "reliability", seed, f"i{seed}", 0.8 + iid[0], 0.7 + iid[1])]
    return rows


def test_acceptance_reads_every_fresh_seed_and_the_iid_reference():
    rows = _acceptance_rows({3: ((0.06, 0.12), (-0.005, 0.0)), 4: ((0.07, 0.11), (0.0, -0.01))})
    text = study.acceptance(study.paired_rows(rows))
    assert "on its fresh seeds 3–4 (2 at Dirichlet 0.3, 2 IID" in text
    assert "accuracy +6.5" in text and "WGA +11.5" in text and "NOT met" not in text
    assert "designed on" not in text  # no design seed has run
    rows[-1]["worst_group_accuracy"] = 0.67  # IID WGA: (0 - 3) / 2 = -1.5 points
    assert study.acceptance(study.paired_rows(rows)).count("NOT met") == 1


def test_acceptance_keeps_the_design_seeds_apart_from_the_fresh_ones():
    """`reliability` was designed on seeds 0–2: the goal is judged on the others, those seeds given beside."""
    assert set(study.DESIGN_SEEDS["reliability"]) == {0, 1, 2}
    rows = _acceptance_rows({0: ((0.20, 0.30), (0.04, 0.05)),  # a design seed, far better than the fresh ones
                             3: ((0.06, 0.08), (0.01, 0.02)), 5: ((0.04, 0.06), (0.01, 0.00))})
    text = study.acceptance(study.paired_rows(rows))
    headline, design = text.split(" On the seeds it was designed on, ")
    assert "fresh seeds 3, 5 (2 at Dirichlet 0.3, 2 IID" in headline
    assert "accuracy +5.0" in headline and "WGA +7.0" in headline and "IID accuracy +1.0, WGA +1.0" in headline
    assert headline.count("NOT met") == 1  # WGA below +10 on the fresh seeds, whatever seed 0 gave
    assert design == "0 (no evidence for it; accuracy / WGA): Dirichlet 0.3 +20.0 / +30.0, IID +4.0 / +5.0."
    only_design = study.acceptance(study.paired_rows(_acceptance_rows({1: ((0.2, 0.3), (0.0, 0.0))})))
    assert "no fresh seed has run" in only_design and "NOT met" not in only_design and ": met" not in only_design


def test_late_variants_run_only_on_fresh_seeds_beside_their_baselines():
    """A variant designed after some seeds were read must never run at them, nor at another late variant's seeds,
    and every seed it runs at must also run the mean and `reliability` on the same teachers."""
    seen = set(study.STUDY_SEEDS)
    for variant, seeds in study.FRESH_SEEDS.items():
        cells = [c for c in study.CELLS if c.endswith(f" | {variant}")]
        assert cells and all(set(study.seeds_of(c)) <= set(seeds) for c in cells)
        assert not set(seeds) & seen
        seen |= set(seeds)
        for cell in cells:
            setting = cell.rsplit(" | ", 1)[0]
            for baseline in ("mean", "reliability"):
                assert set(study.seeds_of(cell)) <= set(study.seeds_of(f"{setting} | {baseline}"))
        assert {c.rsplit(" | ", 1)[0] for c in cells if study.seeds_of(c)} == {"cmnist 0.99 | 0.3", "cmnist 0.99 | iid"}


def test_fresh_seed_comparison_leaves_out_the_seeds_the_design_saw():
    rows = [_row("cmnist 0.99 | 0.3", "mean", 0, "s0", 0.70, 0.60),
            _row("cmnist 0.99 | 0.3", "reliability", 0, "s0", 0.90, 0.90),  # seed 0: read before the design
            _row("cmnist 0.99 | 0.3", "mean", 6, "s6", 0.70, 0.60),
            _row("cmnist 0.99 | 0.3", "reliability", 6, "s6", 0.75, 0.66),
            _row("cmnist 0.99 | 0.3", study.AGREEMENT_GATE, 6, "s6", 0.78, 0.70)]
    text = study.fresh_seed_comparison(study.paired_rows(rows), study.AGREEMENT_GATE)
    assert "fresh seeds 6–8" in text and "`reliability` +5.0 / +6.0 (1 seeds)" in text
    assert f"`{study.AGREEMENT_GATE}` +8.0 / +10.0 (1 seeds)" in text and "IID" not in text
    assert "have not run yet" in study.fresh_seed_comparison(study.paired_rows(rows), study.WEIGHTED_REFERENCE)


def test_teachers_ceiling_counts_the_seeds_where_the_goal_asks_more_than_the_teachers_ensemble():
    rows = []
    for seed, ensemble_wga in enumerate((0.75, 0.65)):  # mean's WGA 0.60 + 0.10 = 0.70: above seed 1's ensemble
        rows += [_row("cmnist 0.99 | 0.3", "mean", seed, f"s{seed}", 0.70, 0.60),
                 _row("cmnist 0.99 | 0.3", "reliability", seed, f"s{seed}", 0.76, 0.68)]
        rows[-2]["teachers_ensemble"] = {"accuracy": 0.80, "worst_group_accuracy": ensemble_wga}
    text = study.teachers_ceiling(study.paired_rows(rows))
    assert "ensemble reaches 0.800 / 0.700" in text and "`reliability`'s student 0.760 / 0.680 (-2.0 WGA" in text
    assert "asks for 0.700: more than the teachers' ensemble on 1 of 2 seeds" in text


def test_pseudo_group_precision_sums_the_conflicting_groups():
    rows = [_row("cmnist 0.99 | 0.3", "mean", 0, "s0", 0.70, 0.60),
            _row("cmnist 0.99 | 0.3", "reliability", 0, "s0", 0.76, 0.68)]
    rows[1]["aggregator_stats"] = {"upweighted_fraction": 0.02, "example_weight_share_wrong_target": 0.5,
                                   "example_weight_share_per_group": {"digit0-aligned": 0.6, "digit0-conflicting": 0.1,
                                                                      "digit1-conflicting": 0.3}}
    text = study.pseudo_group_precision(study.paired_rows(rows))
    assert "carry 0.400 of the weight" in text and "wrong 0.500." in text  # one seed: the mean alone, no ±
    rows += [_row("cmnist 0.99 | 0.3", study.AGREEMENT_GATE, 0, "s0", 0.74, 0.66),  # beside reliability, seed 0
             _row("cmnist 0.99 | 0.3", "reliability", 6, "s6", 0.76, 0.68)]  # a seed the gate did not run at
    rows[2]["aggregator_stats"] = {"upweighted_fraction": 0.01, "example_weight_share_wrong_target": 0.3,
                                   "example_weight_share_per_group": {"digit0-conflicting": 0.2}}
    rows[3]["aggregator_stats"] = {**rows[1]["aggregator_stats"], "example_weight_share_wrong_target": 0.9}
    text = study.pseudo_group_precision(study.paired_rows(rows), study.AGREEMENT_GATE)
    assert "carry 0.200 of the weight" in text
    assert "`reliability` on the same 1 seeds: 0.400 and 0.500." in text


def test_teacher_cache_key_follows_the_clients_privacy_and_not_the_server():
    """DP-SGD changes the teachers, so it changes the key; the aggregator is the server's, so it does not."""
    plain, private = study.CELLS["cmnist 0.99 | 0.3 | mean"], study.CELLS["cmnist 0.99 dpsgd | 0.3 | mean"]
    assert [o for o in private if o not in plain] == ["privacy=dpsgd"] and set(plain) <= set(private)
    key = study.teacher_cache_key([*plain, "seed=0"])
    assert study.teacher_cache_key([*private, "seed=0"]) != key
    for method in ("agre", "reliability"):  # agre asks for the ERM base, which DFR teachers keep anyway
        cell = study.CELLS[f"cmnist 0.99 | 0.3 | {method}"]
        assert [o for o in cell if o not in plain] and study.teacher_cache_key([*cell, "seed=0"]) == key
