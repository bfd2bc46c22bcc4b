"""Soft-label compression on the uplink: how a client's logits [n, C] travel, and how the server
restores full [n, C] float32 logits from them. Only softmax(logits / τ) matters downstream, so an encoding may
shift each row by a constant.

fp32  the logits as float32 (no compression)
fp16  the logits as float16 (relative error <= 2^-11 per value)
int8  per-row affine quantisation to 256 levels: |error| <= (max − min) / 510 per value
topk  the k largest log-probabilities of each row and their class indices; the server sets the other classes to
      a logit so low that their probability is exactly 0, so the restored distribution is the top-k renormalised
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from fedkd.registry import Registry

COMPRESSIONS = Registry("soft-label compression")
MISSING_LOGIT = -1.0e4  # exp(MISSING_LOGIT / tau) is exactly 0 in float32 for any tau <= 100


class CompressionError(ValueError):
    """Encoded soft labels do not have the parts, dtypes or shapes this compression sends."""


class Compression(ABC):
    def __init__(self, top_k: int = 3) -> None:
        self.top_k = top_k

    @abstractmethod
    def encode(self, logits: np.ndarray) -> dict[str, np.ndarray]:
        """The arrays that travel for ``logits`` [n, C]."""

    @abstractmethod
    def decode(self, parts: dict[str, np.ndarray], num_classes: int) -> np.ndarray:
        """float32 logits [n, C] restored from the arrays ``encode`` made."""


def _part(parts: dict[str, np.ndarray], name: str, dtype: type, ndim: int) -> np.ndarray:
    if name not in parts:
        raise CompressionError(f"encoded soft labels lack {name!r} (have {sorted(parts)})")
    array = parts[name]
    if array.dtype != dtype or array.ndim != ndim:
        raise CompressionError(f"{name!r} must be a {ndim}-d {np.dtype(dtype).name} array, got {array.dtype} "
                               f"{list(array.shape)}")
    return array


@COMPRESSIONS.register("fp32")
class Float32(Compression):
    def encode(self, logits: np.ndarray) -> dict[str, np.ndarray]:
        return {"values": np.ascontiguousarray(logits, dtype=np.float32)}

    def decode(self, parts: dict[str, np.ndarray], num_classes: int) -> np.ndarray:
        return _part(parts, "values", np.float32, 2)


@COMPRESSIONS.register("fp16")
class Float16(Compression):
    def encode(self, logits: np.ndarray) -> dict[str, np.ndarray]:
        return {"values": np.ascontiguousarray(logits, dtype=np.float16)}

    def decode(self, parts: dict[str, np.ndarray], num_classes: int) -> np.ndarray:
        return _part(parts, "values", np.float16, 2).astype(np.float32)


@COMPRESSIONS.register("int8")
class Int8(Compression):
    """Row-wise min/scale quantisation: code = round((x − min) / scale), scale = (max − min) / 255."""

    def encode(self, logits: np.ndarray) -> dict[str, np.ndarray]:
        x = logits.astype(np.float64)
        low, high = x.min(1), x.max(1)
        scale = np.where(high > low, (high - low) / 255.0, 1.0)
        codes = np.rint((x - low[:, None]) / scale[:, None]).clip(0, 255).astype(np.uint8)
        return {"codes": codes, "offset": low.astype(np.float32), "scale": scale.astype(np.float32)}

    def decode(self, parts: dict[str, np.ndarray], num_classes: int) -> np.ndarray:
        codes = _part(parts, "codes", np.uint8, 2)
        offset, scale = _part(parts, "offset", np.float32, 1), _part(parts, "scale", np.float32, 1)
        if not len(offset) == len(scale) == len(codes):
            raise CompressionError(f"int8 parts disagree on the number of points: codes {len(codes)}, offset "
                                   f"{len(offset)}, scale {len(scale)}")
        return (offset[:, None] + scale[:, None] * codes.astype(np.float32)).astype(np.float32)


@COMPRESSIONS.register("topk", keeps_top_k=True)  # the trait: query.top_k applies
class TopK(Compression):
    """The k largest log-probabilities (at τ = 1) per point as float32, and their classes as the smallest
    unsigned integer type that holds C − 1."""

    def encode(self, logits: np.ndarray) -> dict[str, np.ndarray]:
        x = logits.astype(np.float64)
        log_p = x - x.max(1, keepdims=True)
        log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
        k = min(self.top_k, x.shape[1])
        classes = np.argsort(-log_p, axis=1, kind="stable")[:, :k]
        index_type = np.min_scalar_type(max(x.shape[1] - 1, 0))
        return {"classes": classes.astype(index_type),
                "log_probs": np.take_along_axis(log_p, classes, 1).astype(np.float32)}

    def decode(self, parts: dict[str, np.ndarray], num_classes: int) -> np.ndarray:
        log_probs = _part(parts, "log_probs", np.float32, 2)
        classes = parts.get("classes")
        if classes is None or classes.shape != log_probs.shape or classes.dtype.kind != "u":
            raise CompressionError(f"top-k 'classes' must be an unsigned integer array shaped like 'log_probs' "
                                   f"{list(log_probs.shape)}")
        if classes.size and int(classes.max()) >= num_classes:
            raise CompressionError(f"top-k class index {int(classes.max())} is not below {num_classes} classes")
        if (np.diff(np.sort(classes, 1), axis=1) == 0).any():
            raise CompressionError("top-k 'classes' name a class twice in one row")
        out = np.full((len(log_probs), num_classes), MISSING_LOGIT, dtype=np.float32)
        np.put_along_axis(out, classes.astype(np.int64), log_probs, 1)
        return out
