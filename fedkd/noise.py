"""The noise operations of the privacy mechanisms: Gaussian noise, projection back onto the simplex, and what a
client releases under local DP (its noised soft labels, its noised class counts)."""

from __future__ import annotations

import numpy as np
import torch

from fedkd.accounting import SQRT2
from fedkd.config import ClientPrivacy
from fedkd.soft_labels import clip_rows


def project_to_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row onto the probability simplex (Duchi et al. 2008, Fig. 1): the closest
    distribution to a noisy vector; post-processing, so it costs no privacy. Written by hand: torch has none."""
    sorted_v, _ = torch.sort(v, dim=-1, descending=True)
    cumsum = sorted_v.cumsum(-1) - 1.0
    ks = torch.arange(1, v.shape[-1] + 1, dtype=v.dtype)
    support = (sorted_v - cumsum / ks) > 0
    rho = support.to(v.dtype).cumsum(-1).argmax(-1, keepdim=True)  # last index where the condition holds
    theta = cumsum.gather(-1, rho) / (rho + 1).to(v.dtype)
    return torch.clamp(v - theta, min=0.0)


def probs_to_logits(probs: torch.Tensor, temperature: float, floor: float = 1e-12) -> torch.Tensor:
    """Logits z with softmax(z / τ) = ``probs`` (a zero probability becomes τ · log ``floor``)."""
    return temperature * torch.log(probs.clamp_min(floor))


def gaussian_noise(shape: tuple[int, ...], std: float, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=generator, dtype=torch.float64) * std


def local_noise(logits: np.ndarray, cfg: ClientPrivacy, temperature: float, generator: torch.Generator) -> np.ndarray:
    """A client's local-DP release of its logits [n, C]: tempered probabilities clipped to ``cfg.clip``, plus
    N(0, (σ·√2·min(c, 1))²) per value, projected onto the simplex, returned as logits at ``temperature``."""
    probs = torch.softmax(torch.from_numpy(logits).double() / temperature, dim=-1)
    clipped = clip_rows(probs, cfg.clip)
    std = cfg.noise_multiplier * SQRT2 * min(cfg.clip, 1.0)
    noisy = project_to_simplex(clipped + gaussian_noise(tuple(clipped.shape), std, generator))
    return probs_to_logits(noisy, temperature).float().numpy()


def noisy_class_counts(counts: np.ndarray, noise_multiplier: float, rng: np.random.Generator) -> np.ndarray:
    """A client's class histogram released with N(0, σ²) per count (adding or removing one example moves one
    count by 1: L2 sensitivity 1), rounded and floored at 0 (post-processing)."""
    return np.maximum(np.rint(counts + rng.normal(0.0, noise_multiplier, counts.shape)), 0).astype(np.int64)
