"""DMN-ZS, the zero-shot (training-free, no support) form of the dual memory network (Zhang et
al., "Dual Memory Networks: A Versatile Adaptation Approach for Vision-Language Models", CVPR
2024; github.com/YBZh/DMN), with its dynamic memory of test features.

No labelled support: the model streams over its queries in order. For query ``x_t`` (normalised)
with zero-shot probabilities ``p_t = softmax(s · x_t Wᵀ)``, entropy ``H_t = −Σ p_t log(p_t + 1e-8)``
and pseudo-label ``ŷ_t = argmax p_t``:

1. **Memory update.** ``x_t`` enters class ``ŷ_t``'s memory (at most ``memory_size`` entries,
   the lowest-entropy ones kept: a full class swaps its highest-entropy entry for ``x_t`` when
   ``H_t`` is strictly lower).
2. **Read-out** (after the update). Class ``c``'s memory plus its text feature ``w_c`` is read
   with attention on the query: ``a_c = Σ_{k ∈ mem_c ∪ {w_c}} exp(−β (1 − x_t·k)) k``; the memory
   logits are ``s · x_t · a_c / ‖a_c‖`` (a class with an empty memory scores its zero-shot logit).
3. **Prediction.** ``p_t + λ softmax(memory logits)``, ``λ = memory_weight``.
   :meth:`DMNZeroShot.decision_function` returns ``log((p_t + λ p^mem_t) / (1 + λ))``: the log
   of that mixture of distributions (same argmax, and its softmax is the mixture).

This is ``DualMem.update_memory_bank`` / ``get_image_pred`` (``similarity_weighted``) of the
released ``dmn_main.py`` with its learnable biases at their zero initialisation (nothing is
trained without shots) and one view per image (the release averages the 10 % most confident of
32 AugMix views; cached features hold one view). The release picks ``λ`` for each dataset on the
**test set** from ``{0.001, 0.003, ..., 1000}``; ssp never searches on the stream and uses the
values logged by the authors (``camera_ready_dmn_tf_searched_vit_0.txt``) as the per-dataset
defaults (docs/baselines.md).

How it runs: the memory decisions read the zero-shot prediction only, so they are computed for
the whole stream at once and replayed on integers (:func:`ssp.methods.stream.replay_memory`);
the read-out is computed for blocks of queries: the affinities with the entries alive in the
block (masked to each step's live ones) and, per class, the Gram matrix of those entries give
``a_c · x`` and ``‖a_c‖`` without forming any ``[T, C, D]`` read-out (blocks bounded in memory).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ssp._lazy import torch
from ssp._utils.arrays import ArrayLike
from ssp.methods.registry import register_method
from ssp._utils.params import Integer, Real
from ssp.methods.stream import BLOCK_ELEMENTS, STREAM_CONSTRAINTS, StreamingClassifier, replay_memory

__all__ = ["DMNZeroShot"]

_ENTROPY_EPS = 1e-8  # the log's epsilon in the released entropy


def _dmn_params(cfg: Mapping[str, Any], n_features: int) -> dict:
    return dict(cfg["dmn"])


@register_method("dmn-zs", title="DMN-ZS", config_section="dmn", params=_dmn_params, test_time=True,
                 aliases=("dmn", "dmn-zero-shot"))
class DMNZeroShot(StreamingClassifier):
    """DMN-ZS (Zhang et al., CVPR 2024): a dynamic memory of the test stream per class, read
    with attention on each query (see the module docstring for the formulas).

    Args:
        memory_size: entries per class (50 in the released scripts).
        beta: sharpness of the read-out attention ``exp(−β (1 − cos))`` (5.5).
        memory_weight: ``λ``, the weight of the memory's probabilities against zero-shot's.
        logit_scale: multiplies the cosine similarities (100, CLIP's).
        chunk_size: most queries per block of the read-out (None: as many as the memory bound
            allows).
        device: torch device; ``None`` = CUDA if available else CPU.

    Fitted attributes: ``classes_``, ``text_features_`` [C, D], ``n_features_in_``, ``device_``,
    ``dtype_``. :meth:`stream` returns the scores and the memory's counts.
    """

    def __init__(self, *, memory_size: int = 50, beta: float = 5.5, memory_weight: float = 1.0,
                 logit_scale: float = 100.0, chunk_size: int | None = None,
                 device: str | torch.device | None = None) -> None:
        self.memory_size = memory_size
        self.beta = beta
        self.memory_weight = memory_weight
        self.logit_scale = logit_scale
        self.chunk_size = chunk_size
        self.device = device

    def fit(self, image_features: ArrayLike | None = None, labels: ArrayLike | None = None, *,
            text_features: ArrayLike, patch_features: ArrayLike | None = None) -> "DMNZeroShot":
        """Store the text classifier ``[C, D]``; nothing else is learned before the stream."""
        return super().fit(image_features, labels, text_features=text_features,
                           patch_features=patch_features)

    _parameter_constraints = {**STREAM_CONSTRAINTS, "memory_size": [Integer(1)], "beta": [Real()],
                              "memory_weight": [Real(0)]}

    def _stream(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        n, n_classes = x.shape[0], len(self.classes_)
        scale, beta = float(self.logit_scale), float(self.beta)
        text = self._torch.text_features_
        cos_text = x @ text.T                                            # [M, C]
        p = torch.softmax(scale * cos_text, dim=1)
        loss = -(p * torch.log(p + _ENTROPY_EPS)).sum(dim=1)
        pred = p.argmax(dim=1)
        pred_np = pred.cpu().numpy()
        replay = replay_memory(pred_np, loss.double().cpu().numpy(), int(self.memory_size))
        text_kernel = torch.exp(-beta * (1.0 - cos_text))                # [M, C]
        # ‖a_c‖² = κ_c² + 2 κ_c Σ_k e_k (w_c·m_k) + Σ_{k,l} e_k e_l (m_k·m_l) over class c's live
        # entries (κ: text weight, e: entry weights), so a block of queries needs each class's
        # Gram matrix of the entries alive in the block, never an [T, C, D] read-out.
        memory_logits = torch.empty_like(cos_text)
        t0 = 0
        while t0 < n:
            t1, entries, positions, width = self._block(replay, pred_np, t0, n, n_classes)
            memory_logits[t0:t1] = self._read_block(x, cos_text, text_kernel, pred_np, replay, t0, t1,
                                                    entries, positions, width, n_classes)
            t0 = t1
        lam = float(self.memory_weight)
        mixture = (p + lam * torch.softmax(memory_logits, dim=1)) / (1.0 + lam)
        summary = {"queries": n, "memory": replay.summary(n_classes, pred_np)}
        return torch.log(mixture).clamp_min(torch.finfo(mixture.dtype).min), summary

    def _block(self, replay, pred: np.ndarray, t0: int, n: int, n_classes: int):
        """The next block ``[t0, t1)``: as long as ``T · C · width`` stays within the element
        budget, ``width`` being the most entries of one class alive in the block. Returns ``(t1,
        entries sorted by class, their positions within their class, width)``."""
        budget = BLOCK_ELEMENTS
        t1 = n if self.chunk_size is None else min(n, t0 + int(self.chunk_size))
        while True:
            entries = replay.alive(t0, t1)
            classes = pred[entries]
            order = np.argsort(classes, kind="stable")
            entries, classes = entries[order], classes[order]
            counts = np.bincount(classes, minlength=n_classes)
            width = int(counts.max()) if entries.size else 0
            if t1 - t0 == 1 or (t1 - t0) * n_classes * max(width, 1) <= budget:
                positions = np.arange(entries.size) - (np.cumsum(counts) - counts)[classes]
                return t1, entries, positions, width
            t1 = t0 + (t1 - t0) // 2

    def _read_block(self, x, cos_text, text_kernel, pred, replay, t0, t1, entries, positions, width,
                    n_classes):
        """Memory logits ``[T, C]`` of the queries ``t0 .. t1-1``."""
        scale, beta = float(self.logit_scale), float(self.beta)
        kappa, cos_q = text_kernel[t0:t1], cos_text[t0:t1]
        if entries.size == 0:                       # every class reads its text feature only
            return scale * cos_q
        device = x.device
        idx = torch.as_tensor(entries, device=device)
        cls = torch.as_tensor(pred[entries], device=device)
        pos = torch.as_tensor(positions, device=device)
        steps = torch.arange(t0, t1, device=device)[:, None]
        evicted = torch.as_tensor(replay.evicted_at[entries], device=device)
        live = (idx[None, :] <= steps) & (steps < evicted[None, :])    # [T, R]
        keys = x[idx]                                                  # [R, D]
        cos_k = x[t0:t1] @ keys.T                                      # [T, R]
        weight = torch.exp(-beta * (1.0 - cos_k)) * live               # [T, R]
        text_cos = cos_text[idx, cls]                                  # w_c · m_k  [R]
        dot = torch.zeros_like(cos_q).index_add_(1, cls, weight * cos_k)
        cross = torch.zeros_like(cos_q).index_add_(1, cls, weight * text_cos)
        padded = keys.new_zeros(n_classes, width, keys.shape[1])
        padded[cls, pos] = keys
        gram = padded @ padded.transpose(1, 2)                         # [C, W, W]
        grid = weight.new_zeros(n_classes, t1 - t0, width)
        grid[cls, :, pos] = weight.T
        quad = (torch.bmm(grid, gram) * grid).sum(-1).T                # [T, C]
        norm2 = kappa * kappa + 2.0 * kappa * cross + quad
        return scale * (kappa * cos_q + dot) / norm2.sqrt()
