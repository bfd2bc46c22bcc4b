"""Whom a method costs: each test group's accuracy, paired against the study's reference seed by seed (the same
data and teachers), so that a worst-group or mean figure that hides a group's loss shows it. Colored MNIST's
groups are read as the literature reads them, bias-aligned against bias-conflicting points; a dataset without that
view (MNIST-LT) by its own groups (classes)."""

from collections.abc import Sequence

import numpy as np

from fedkd.study import StudyConfig
from fedkd.study_runs import MethodGroup, StudyRun, reference_of

TWO_GROUP = {"aligned": "bias_aligned_accuracy", "conflicting": "bias_conflicting_accuracy"}


def group_accuracies(run: StudyRun) -> dict[str, float]:
    """A job's test accuracy per group: aligned / conflicting where its dataset has that view, else per group."""
    test = run.run.summary["test"]
    if all(test.get(key) is not None for key in TWO_GROUP.values()):
        return {name: float(test[key]) for name, key in TWO_GROUP.items()}
    return {name: float(acc) for name, acc in test.get("per_group_accuracy", {}).items()}


def group_change(group: MethodGroup, reference: MethodGroup) -> tuple[list[int], dict[str, float]]:
    """The seeds both ran and, per test group, the mean over them of the group's accuracy under ``group`` minus
    under ``reference``."""
    ours = {r.seed: group_accuracies(r) for r in group.runs}
    theirs = {r.seed: group_accuracies(r) for r in reference.runs}
    seeds = sorted(set(ours) & set(theirs))
    names = [n for n in ours[seeds[0]] if all(n in ours[s] and n in theirs[s] for s in seeds)] if seeds else []
    return seeds, {n: float(np.mean([ours[s][n] - theirs[s][n] for s in seeds])) for n in names}


def group_change_lines(study: StudyConfig, groups: Sequence[MethodGroup]) -> list[str]:
    """Markdown: one table per set of groups (a dataset), a row per method with a reference."""
    tables: dict[tuple[str, ...], list[list[str]]] = {}
    for g in groups:
        ref = reference_of(study, g, groups)
        if ref is None:
            continue
        seeds, change = group_change(g, ref)
        if not change:
            continue
        tables.setdefault(tuple(change), []).append([f"`{g.label}`", str(len(seeds)),
                                                     *(f"{v:+.3f}" for v in change.values())])
    if not tables:
        return []
    lines = [f"## Accuracy per group against `{study.reference_text()}` in the same setting", "",
             "Per test group, the mean over the seeds both ran of its accuracy under the method minus under the "
             "reference (negative: the group lost); aligned / conflicting: the test points whose colour agrees or "
             "disagrees with the training bias.", ""]
    for names, rows in tables.items():
        lines += ["| group | seeds | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 2),
                  *("| " + " | ".join(row) + " |" for row in rows), ""]
    return lines
