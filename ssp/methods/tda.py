"""TDA, a training-free dynamic adapter for test-time adaptation (Karmanov et al., "Efficient
Test-Time Adaptation of Vision-Language Models", CVPR 2024; github.com/kdiAAA/TDA).

No labelled support: the model streams over its queries in order. For query ``x_t`` (normalised)
with zero-shot logits ``z_t = s · x_t Wᵀ``, probabilities ``p_t = softmax(z_t)``, entropy
``H_t = −Σ p_t log p_t`` (nats) and pseudo-label ``ŷ_t = argmax z_t``:

1. **Positive cache.** ``x_t`` enters class ``ŷ_t``'s entries (at most ``pos_shot_capacity``,
   the lowest-entropy ones kept: a full class swaps its highest-entropy entry for ``x_t`` when
   ``H_t`` is strictly lower).
2. **Negative cache.** When ``lower < h_t < upper`` (``neg_entropy_bounds``) for the normalised
   entropy ``h_t``, ``x_t`` enters the negative cache the same way (``neg_shot_capacity`` per
   class), with the value ``m_t = 1[m_lo < p_t < m_hi]`` ``[C]`` (``neg_mask_bounds``): the
   classes the uncertain query found plausible.
3. **Logits** (after both updates, so ``x_t`` may read itself)::

       z_t + α⁺ Σ_{k ∈ pos} exp(−β⁺ (1 − x_t·k)) onehot(ŷ_k) − α⁻ Σ_{k ∈ neg} exp(−β⁻ (1 − x_t·k)) m_k

The sign of the negative term and the mask ``p > m_lo`` follow the released ``tda_runner.py``
(its authors confirm them in kdiAAA/TDA issue #5). The released ``get_entropy`` divides the
entropy in nats by ``log₂ C`` (a uniform prediction scores ``ln 2 ≈ 0.69``, not 1); its published
thresholds (0.2, 0.5) are on that scale, so ``entropy_norm="released"`` is the default and
``"unit"`` divides by ``ln C`` (the normalised entropy in ``[0, 1]``).

How it runs: every cache decision reads the zero-shot prediction only, so ``z``, ``p``, ``H`` and
``ŷ`` are computed for the whole stream at once, the caches' histories are replayed on integers
(:func:`ssp.methods.stream.replay_memory`) and the cache terms are computed for blocks of
queries with one affinity matmul each, masked to the entries alive at each step.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from ssp._checks import check_real
from ssp._lazy import torch
from ssp._utils.arrays import ArrayLike
from ssp.methods.registry import register_method
from ssp._utils.params import Integer, Options, Real
from ssp.methods.stream import BLOCK_ELEMENTS, STREAM_CONSTRAINTS, StreamingClassifier, replay_memory

__all__ = ["TDA"]

ENTROPY_NORMS = ("released", "unit")


def _tda_params(cfg: Mapping[str, Any], n_features: int) -> dict:
    section = dict(cfg["tda"])
    for key in ("neg_entropy_bounds", "neg_mask_bounds"):
        if key in section and isinstance(section[key], list):
            section[key] = tuple(section[key])
    return section


def _check_bounds(value: Any, name: str) -> tuple[float, float]:
    ok = isinstance(value, (list, tuple)) and len(value) == 2
    if ok:
        lo, hi = (check_real(v, name) for v in value)
        if lo <= hi:
            return lo, hi
    raise ValueError(f"{name} must be (lower, upper) with lower <= upper, got {value!r}")


@register_method("tda", title="TDA", config_section="tda", params=_tda_params, test_time=True)
class TDA(StreamingClassifier):
    """TDA (Karmanov et al., CVPR 2024): positive and negative caches of the test stream (see
    the module docstring for the formulas).

    Args:
        pos_shot_capacity: positive-cache entries per class (0 disables the positive cache).
        pos_alpha, pos_beta: weight and sharpness of the positive cache term.
        neg_shot_capacity: negative-cache entries per class (0 disables the negative cache).
        neg_alpha, neg_beta: weight and sharpness of the negative cache term.
        neg_entropy_bounds: ``(lower, upper)``: a query enters the negative cache when its
            normalised entropy lies strictly between them.
        neg_mask_bounds: ``(lower, upper)``: the negative value marks the classes whose zero-shot
            probability lies strictly between them.
        entropy_norm: "released" (nats / log₂ C, the released code and its thresholds) or
            "unit" (nats / ln C).
        logit_scale: multiplies the cosine similarities of the zero-shot term (100).
        chunk_size: queries per block of the cache terms (None: automatic, bounded memory).
        device: torch device; ``None`` = CUDA if available else CPU.

    Defaults are the published ImageNet configuration (``configs/imagenet.yaml`` of the
    repository); ssp's per-dataset configs carry each dataset's published values.

    Fitted attributes: ``classes_``, ``text_features_`` [C, D], ``n_features_in_``, ``device_``,
    ``dtype_``. :meth:`stream` returns the logits and the caches' counts.
    """

    def __init__(self, *, pos_shot_capacity: int = 3, pos_alpha: float = 2.0, pos_beta: float = 5.0,
                 neg_shot_capacity: int = 2, neg_alpha: float = 0.117, neg_beta: float = 1.0,
                 neg_entropy_bounds: Sequence[float] = (0.2, 0.5),
                 neg_mask_bounds: Sequence[float] = (0.03, 1.0), entropy_norm: str = "released",
                 logit_scale: float = 100.0, chunk_size: int | None = None,
                 device: str | torch.device | None = None) -> None:
        self.pos_shot_capacity = pos_shot_capacity
        self.pos_alpha = pos_alpha
        self.pos_beta = pos_beta
        self.neg_shot_capacity = neg_shot_capacity
        self.neg_alpha = neg_alpha
        self.neg_beta = neg_beta
        self.neg_entropy_bounds = neg_entropy_bounds
        self.neg_mask_bounds = neg_mask_bounds
        self.entropy_norm = entropy_norm
        self.logit_scale = logit_scale
        self.chunk_size = chunk_size
        self.device = device

    def fit(self, image_features: ArrayLike | None = None, labels: ArrayLike | None = None, *,
            text_features: ArrayLike, patch_features: ArrayLike | None = None) -> "TDA":
        """Store the text classifier ``[C, D]``; nothing else is learned before the stream."""
        return super().fit(image_features, labels, text_features=text_features,
                           patch_features=patch_features)

    _parameter_constraints = {**STREAM_CONSTRAINTS,
                              "pos_shot_capacity": [Integer(0)], "neg_shot_capacity": [Integer(0)],
                              "pos_alpha": [Real()], "pos_beta": [Real()], "neg_alpha": [Real()], "neg_beta": [Real()],
                              "entropy_norm": [Options(ENTROPY_NORMS)]}

    def _check_params(self) -> None:
        super()._check_params()
        _check_bounds(self.neg_entropy_bounds, "neg_entropy_bounds")
        _check_bounds(self.neg_mask_bounds, "neg_mask_bounds")

    def _stream(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        n, n_classes = x.shape[0], len(self.classes_)
        z = self._zero_shot(x)
        log_p = torch.log_softmax(z, dim=1)
        p = log_p.exp()
        loss = -(p * log_p).sum(dim=1)                                   # entropy in nats
        divisor = math.log2(n_classes) if self.entropy_norm == "released" else math.log(n_classes)
        h = (loss / divisor).cpu().numpy() if n_classes > 1 else np.zeros(n)
        pred = z.argmax(dim=1)
        pred_np, loss_np = pred.cpu().numpy(), loss.double().cpu().numpy()
        lo, hi = _check_bounds(self.neg_entropy_bounds, "neg_entropy_bounds")
        m_lo, m_hi = _check_bounds(self.neg_mask_bounds, "neg_mask_bounds")
        caches = []   # (replay, alpha, beta, values: None = one-hot pseudo-labels)
        summary: dict = {"queries": n}
        if self.pos_shot_capacity:
            replay = replay_memory(pred_np, loss_np, self.pos_shot_capacity)
            caches.append((replay, float(self.pos_alpha), float(self.pos_beta), None))
            summary["positive"] = replay.summary(n_classes, pred_np)
        if self.neg_shot_capacity:
            replay = replay_memory(pred_np, loss_np, self.neg_shot_capacity, (h > lo) & (h < hi))
            mask = ((p > m_lo) & (p < m_hi)).to(z.dtype)
            caches.append((replay, -float(self.neg_alpha), float(self.neg_beta), mask))
            summary["negative"] = replay.summary(n_classes, pred_np)
        logits = z.clone()
        capacity = n_classes * (int(self.pos_shot_capacity) + int(self.neg_shot_capacity))
        rows = self._block_rows(capacity)
        steps_all = torch.arange(n, device=x.device)
        for t0 in range(0, n, rows):
            t1 = min(n, t0 + rows)
            steps = steps_all[t0:t1, None]
            for replay, alpha, beta, values in caches:
                alive = replay.alive(t0, t1)
                if alive.size == 0:
                    continue
                keys = torch.as_tensor(alive, device=x.device)
                evicted = torch.as_tensor(replay.evicted_at[alive], device=x.device)
                live = (keys[None, :] <= steps) & (steps < evicted[None, :])
                kernel = torch.exp(-beta * (1.0 - x[t0:t1] @ x[keys].T)) * live
                if values is None:
                    logits[t0:t1].index_add_(1, pred[keys], kernel, alpha=alpha)
                else:
                    logits[t0:t1].addmm_(kernel, values[keys], alpha=alpha)
        return logits, summary

    def _block_rows(self, capacity: int) -> int:
        """Queries per block: a block of ``T`` reads at most ``capacity + T`` entries, so
        ``T (capacity + T)`` stays within the automatic element budget."""
        if self.chunk_size is not None:
            return int(self.chunk_size)
        budget = BLOCK_ELEMENTS
        return max(1, int((-capacity + math.sqrt(capacity * capacity + 4 * budget)) / 2))
