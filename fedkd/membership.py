"""An empirical privacy check: the loss-threshold membership-inference attack on a trained model."""

from __future__ import annotations

import numpy as np
import torch

from fedkd.training import predict_logits


def example_losses(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cross-entropy of ``model`` on each (x, y): the score of a loss-threshold membership-inference attack."""
    logits = predict_logits(model, x)
    return torch.nn.functional.cross_entropy(logits, torch.from_numpy(y), reduction="none").numpy()


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
