"""The subpopulation-shift metric set of SubpopBench (YyzHarry/SubpopBench, ``subpopbench/utils/eval_helper.py``),
computed from a finished run's test predictions and probabilities with the libraries those metrics come from:
scikit-learn for accuracy-type scores and AUROC, torchmetrics for calibration.

Names say which groups a figure is over: ``worst_group_accuracy`` is the minimum over the benchmark's test groups
(all class x attribute cells; 20 on Colored MNIST), ``two_group_worst_group_accuracy`` the minimum of bias-aligned
and bias-conflicting accuracy (AGRE-KD's Table 1), ``mean_group_accuracy`` SubpopBench's "adjusted accuracy" (the
unweighted mean over groups), ``train_weighted_accuracy`` the per-group accuracies weighted by the clients' pooled
training group proportions (the "average accuracy" reported on Waterbirds; threads
PolinaKirichenko/deep_feature_reweighting#1 and anniesch/jtt#2).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, precision_recall_fscore_support, roc_auc_score
from torchmetrics.functional.classification import multiclass_calibration_error

ECE_BINS = 10  # SubpopBench's netcal.metrics.ECE() default


def subpopulation_metrics(y: np.ndarray, g: np.ndarray, pred: np.ndarray, probabilities: np.ndarray | None,
                          num_classes: int, train_group_counts: np.ndarray | None = None) -> dict[str, float]:
    """Every metric the arrays allow: the probability-based ones need ``probabilities`` ([n, num_classes]),
    the training-weighted accuracy needs the clients' pooled group counts (zeros when they were withheld)."""
    labels = np.arange(num_classes)
    correct = pred == y
    groups = np.unique(g)
    group_accuracy = {int(k): float(correct[g == k].mean()) for k in groups}
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0.0)
    present = support > 0
    out = {
        "accuracy": float(correct.mean()),
        "worst_group_accuracy": min(group_accuracy.values()),
        "mean_group_accuracy": float(np.mean(list(group_accuracy.values()))),
        "class_balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "worst_class_accuracy": float(recall[present].min()),
        "worst_class_precision": float(precision[present].min()),
        "worst_class_f1": float(f1[present].min()),
    }
    if train_group_counts is not None and np.sum(train_group_counts) > 0:
        weights = np.asarray(train_group_counts, dtype=float) / np.sum(train_group_counts)
        out["train_weighted_accuracy"] = float(sum(weights[k] * group_accuracy.get(k, math.nan)
                                                   for k in range(len(weights)) if weights[k] > 0))
    if probabilities is not None:
        p = np.asarray(probabilities, dtype=np.float64)
        p = p / p.sum(1, keepdims=True)  # float32 rows that sum to 1 within 1e-7; sklearn checks the sum
        if present.all():
            out["auroc"] = float(roc_auc_score(y, p, multi_class="ovr", labels=labels))
        out["ece"] = float(multiclass_calibration_error(torch.from_numpy(p), torch.from_numpy(y), num_classes,
                                                        n_bins=ECE_BINS, norm="l1"))
    return out
