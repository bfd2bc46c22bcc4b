"""Empirical privacy checks on a trained model: the loss-threshold membership-inference attack (Yeom et al. 2018),
and the offline likelihood-ratio attack LiRA (Carlini et al. 2022, "Membership Inference Attacks From First
Principles", arXiv 2112.03570, Section V-B), which calibrates each example against models that did not train on
it and sees much more on small shards."""

from __future__ import annotations

import numpy as np
import scipy.stats
import torch

from fedkd.training import predict_logits


def example_losses(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cross-entropy of ``model`` on each (x, y): the score of a loss-threshold membership-inference attack."""
    logits = predict_logits(model, x)
    return torch.nn.functional.cross_entropy(logits, torch.from_numpy(y), reduction="none").numpy()


def logit_confidence(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """φ = log(p_y / (1 − p_y)) of ``model`` on each (x, y), from the logits (z_y − logsumexp_{j≠y} z_j): LiRA's
    statistic, close to Gaussian across models where the confidence p_y itself is not."""
    logits = predict_logits(model, x).double()
    true = logits.gather(1, torch.from_numpy(y).long()[:, None])[:, 0]
    rest = logits.scatter(1, torch.from_numpy(y).long()[:, None], -torch.inf).logsumexp(1)
    return (true - rest).numpy()


def lira_offline_scores(target: np.ndarray, shadows: np.ndarray) -> np.ndarray:
    """Offline LiRA: for each example, how far the target model's φ lies above the φ of ``shadows`` [S, n] (models
    that did not train on it), as the one-sided Gaussian likelihood Φ((φ − μ_out)/σ_out); higher = member. With
    few shadows the variance is the one pooled over examples (the paper's "global variance")."""
    mu = shadows.mean(0)
    sigma = max(float(np.sqrt(shadows.var(0, ddof=1).mean())), 1e-6)
    return scipy.stats.norm.cdf((target - mu) / sigma)


def attack_metrics(member_scores: np.ndarray, nonmember_scores: np.ndarray,
                   fprs: tuple[float, ...] = (0.01, 0.001)) -> dict:
    """AUC of an attack that calls the higher score "member", and its TPR at low false-positive rates (what an
    attack that is confident about a few examples shows, and an average hides)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    labels = np.r_[np.ones(len(member_scores)), np.zeros(len(nonmember_scores))]
    scores = np.r_[member_scores, nonmember_scores]
    fpr, tpr, _ = roc_curve(labels, scores)
    return {"auc": float(roc_auc_score(labels, scores)),
            **{f"tpr_at_fpr_{f:g}": float(np.max(tpr[fpr <= f], initial=0.0)) for f in fprs}}


def membership_auc(member_losses: np.ndarray, nonmember_losses: np.ndarray, member_groups: np.ndarray,
                   nonmember_groups: np.ndarray, group_names: tuple[str, ...]) -> dict:
    """AUC of the loss-threshold membership-inference attack (Yeom et al. 2018: guess "member" when the loss is
    low), overall and per group present on both sides: 0.5 = no leak the attack can see, 1 = perfect."""
    from sklearn.metrics import roc_auc_score

    def auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
        labels = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
        return float(roc_auc_score(labels, -np.r_[members, nonmembers]))

    per_group = {}
    for g, name in enumerate(group_names):
        a, b = member_losses[member_groups == g], nonmember_losses[nonmember_groups == g]
        if len(a) and len(b):
            per_group[name] = auc(a, b)
    return {"auc": auc(member_losses, nonmember_losses), "per_group_auc": per_group}
