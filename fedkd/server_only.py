"""The server-only references: what the server reaches with its own labeled split and no client at all, the
reference that decides whether federated distillation helps. Each is the best of a few standard recipes for a small
labeled set (a linear model on the pixels; a linear model on the features of the student's network as the server
has it, pretrained where ``student.pretrained_path`` is given, else at its seeded initialisation; the student's
network trained on the split until it fits it), chosen by stratified cross-validation on the labeled split alone,
never the test split. ``server_only`` selects by the held-out predictions' accuracy; ``server_only_balanced`` fits
every recipe with the groups weighted equally (the treatment DFR teachers get) and selects by their worst-group
accuracy."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from fedkd.baselines import student_network, teachers_schedule
from fedkd.config import RunConfig
from fedkd.data import Benchmark, Split
from fedkd.dfr import features, group_balanced_weights
from fedkd.metrics import worst_group_accuracy
from fedkd.teachers import fit_on
from fedkd.training import predict_logits

LOGREG_C_GRID = (1.0, 0.1, 0.01)  # inverse L2 strengths of the linear recipes, scikit-learn's default first
MAX_FOLDS = 3
# Cross-validation needs two training images of every class in each fold, so three of each; below that its
# scores are noise (one-shot models scored on one image per class) and this recipe is taken without choosing:
# scikit-learn's default logistic regression on the pixels
MIN_PER_CLASS_TO_SELECT = 3
DEFAULT_RECIPE = "logreg_pixels_C=1.0"

# (train, evaluate, balanced) -> the predicted classes of ``evaluate``
Recipe = Callable[[Split, Split, bool], np.ndarray]


def _weights(split: Split, balanced: bool) -> np.ndarray | None:
    """Group-balanced weights scaled to mean 1 (C keeps its unweighted meaning), or none."""
    return group_balanced_weights(split.g) * len(split) if balanced else None


def _logreg(inputs: Callable[[Split], np.ndarray], c: float, standardise: bool) -> Recipe:
    """Multinomial logistic regression (L2, lbfgs) on ``inputs``, standardised or as they are (pixels share one
    scale already, and standardising a pixel that barely varies over a few images inflates its noise)."""
    def fit_predict(train: Split, evaluate: Split, balanced: bool) -> np.ndarray:
        x, x_eval = inputs(train), inputs(evaluate)
        if standardise:
            scaler = StandardScaler().fit(x)
            x, x_eval = scaler.transform(x), scaler.transform(x_eval)
        model = LogisticRegression(C=c, max_iter=2000)
        model.fit(x, train.y, sample_weight=_weights(train, balanced))
        return model.predict(x_eval)
    return fit_predict


def _cnn(cfg: RunConfig, bench: Benchmark, seed: int) -> Recipe:
    """The student's architecture trained with cross-entropy (group-weighted when balanced) on the teachers'
    SGD schedule, for ``baselines.server_only_cnn_steps`` steps at least: on a few images an epoch is one step."""
    def fit_predict(train: Split, evaluate: Split, balanced: bool) -> np.ndarray:
        model = student_network(cfg, bench, seed)
        steps_per_epoch = math.ceil(len(train) / cfg.teacher.batch_size)
        epochs = max(cfg.teacher.epochs, math.ceil(cfg.baselines.server_only_cnn_steps / steps_per_epoch))
        # batches of equal size: on 33 images a last batch of one diverges at the teachers' learning rate
        schedule = teachers_schedule(cfg, "erm", arch=cfg.student.arch, epochs=epochs,
                                     batch_size=math.ceil(len(train) / steps_per_epoch))
        weight_of_group = None
        if balanced:
            weights = _weights(train, True)
            weight_of_group = torch.zeros(int(train.g.max()) + 1)
            weight_of_group[torch.from_numpy(train.g)] = torch.from_numpy(weights)

        def loss(logits: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
            per_example = F.cross_entropy(logits, y, reduction="none")
            if weight_of_group is None:
                return per_example.mean()
            w = weight_of_group.to(logits.device)[g]
            return (w * per_example).sum() / w.sum()

        torch.manual_seed(seed)
        fit_on(model, train, loss, schedule, np.random.default_rng([seed, 7]))
        return predict_logits(model, evaluate.x).argmax(1).numpy()
    return fit_predict


def recipes(cfg: RunConfig, bench: Benchmark) -> dict[str, Recipe]:
    """The candidates, simplest first (a tie keeps the first)."""
    seed = cfg.seed + 101
    network = student_network(cfg, bench, seed)
    pixels = lambda split: split.x.reshape(len(split), -1)  # noqa: E731
    network_features = lambda split: features(network, split)  # noqa: E731
    out: dict[str, Recipe] = {f"logreg_pixels_C={c}": _logreg(pixels, c, False) for c in LOGREG_C_GRID}
    out.update({f"logreg_features_C={c}": _logreg(network_features, c, True) for c in LOGREG_C_GRID})
    out["cnn"] = _cnn(cfg, bench, seed)
    return out


def _score(pred: np.ndarray, split: Split, balanced: bool) -> float:
    return worst_group_accuracy(pred, split.y, split.g) if balanced else float(np.mean(pred == split.y))


def select_and_fit(candidates: dict[str, Recipe], labeled: Split, test: Split, balanced: bool,
                   seed: int) -> tuple[str, dict[str, float], int, np.ndarray]:
    """Stratified k-fold cross-validation on ``labeled`` (k = 3, or the smallest class's count when below), every
    candidate scored on its pooled held-out predictions; the best refitted on all of ``labeled`` predicts
    ``test``. Returns the chosen name, every candidate's score, k (0: no cross-validation, ``DEFAULT_RECIPE``
    taken, see ``MIN_PER_CLASS_TO_SELECT``) and the test predictions."""
    smallest = int(np.unique(labeled.y, return_counts=True)[1].min())
    folds = min(MAX_FOLDS, smallest)
    scores: dict[str, float] = {}
    if smallest >= MIN_PER_CLASS_TO_SELECT:
        split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(labeled.y, labeled.y)
        parts = [(labeled.subset(a), labeled.subset(b), b) for a, b in split]
        for name, fit_predict in candidates.items():
            pred = np.empty(len(labeled), dtype=np.int64)
            for train, held, rows in parts:
                pred[rows] = fit_predict(train, held, balanced)
            scores[name] = _score(pred, labeled, balanced)
        chosen = max(scores, key=scores.get)  # the first of the best
    else:
        folds, chosen = 0, DEFAULT_RECIPE
    return chosen, scores, folds, candidates[chosen](labeled, test, balanced)


SERVER_ONLY_MODELS = {"server_only": False, "server_only_balanced": True}  # name: selected and weighted by group


def server_only_reports(cfg: RunConfig, bench: Benchmark) -> dict[str, dict]:
    """``server_only`` and ``server_only_balanced``: each the test report of the recipe its cross-validation chose,
    with the choice, every recipe's cross-validated score and the labeled split's size beside."""
    labeled, candidates = bench["val"], recipes(cfg, bench)
    if len(np.unique(labeled.y)) < 2:
        raise ValueError(f"the server-only references need labeled images of two classes or more; the labeled split "
                         f"has {len(labeled)} images of classes {np.unique(labeled.y).tolist()}")
    out = {}
    for name, balanced in SERVER_ONLY_MODELS.items():
        chosen, scores, folds, pred = select_and_fit(candidates, labeled, bench["test"], balanced, cfg.seed)
        out[name] = {**bench.report(pred), "recipe": chosen, "folds": folds, "labeled": len(labeled),
                     "selected_by": "worst_group_accuracy" if balanced else "accuracy",
                     "cross_validation": scores}
    return out
