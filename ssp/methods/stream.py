"""What the test-time methods (:mod:`ssp.methods.tda`, :mod:`ssp.methods.dmn`) share.

Both stream over their queries in the given order with no labels, keep per-class memories of
earlier queries chosen by the zero-shot prediction, and classify each query after the memory
has taken it in. Everything a memory decision reads (pseudo-label, entropy, probabilities) comes
from the zero-shot logits alone, so it is computed for the whole stream at once; the memory's
history is then replayed on integers (:func:`replay_memory`) and only the read-out touches
features.
"""
from __future__ import annotations

import numpy as np

from ssp._lazy import torch
from ssp._utils.arrays import ArrayLike, like_input
from ssp.methods.base import CLIPFeatureClassifier
from ssp._utils.params import Integer, Real

__all__ = ["replay_memory", "Replay", "BLOCK_ELEMENTS", "STREAM_CONSTRAINTS", "StreamingClassifier"]

#: Elements of the largest intermediate of one block of queries (64 MiB in float32).
BLOCK_ELEMENTS = 1 << 24

#: The constraints every streaming method's table starts from.
STREAM_CONSTRAINTS = {"logit_scale": [Real()], "chunk_size": [Integer(1), None]}


class Replay:
    """The history of one per-class bounded memory over a stream of ``M`` queries.

    Attributes:
        admitted: ``[M]`` bool, query ``t`` entered the memory (at step ``t``).
        evicted_at: ``[M]`` int64, the step at which an admitted query left (``M``: never).
        replaced: ``[M]`` int64, the query that admitted query ``t`` replaced (``-1``: none).
    """

    def __init__(self, n: int) -> None:
        self.admitted = np.zeros(n, dtype=bool)
        self.evicted_at = np.full(n, n, dtype=np.int64)
        self.replaced = np.full(n, -1, dtype=np.int64)

    def alive(self, t0: int, t1: int) -> np.ndarray:
        """Indices of the queries in the memory at some step of ``[t0, t1)``, ascending."""
        return np.flatnonzero(self.admitted[:t1] & (self.evicted_at[:t1] > t0))

    def summary(self, n_classes: int, labels: np.ndarray) -> dict:
        """Counts for run records: admitted, evicted, left at the end, classes with any entry."""
        final = self.admitted & (self.evicted_at == self.admitted.size)
        return {"admitted": int(self.admitted.sum()),
                "evicted": int((self.admitted & ~final).sum()),
                "final_size": int(final.sum()),
                "classes_filled": int(np.unique(labels[final]).size) if final.any() else 0,
                "classes": int(n_classes)}


def replay_memory(labels: np.ndarray, keys: np.ndarray, capacity: int,
                  eligible: np.ndarray | None = None) -> Replay:
    """Replay a memory that keeps, per class, the ``capacity`` queries of lowest ``key``.

    Query ``t`` (if ``eligible[t]``) goes to class ``labels[t]``: it is added while the class
    holds fewer than ``capacity`` entries, otherwise it replaces the entry of largest key when its
    own key is strictly smaller (ties between stored keys: the most recently added one goes).
    This is TDA's ``update_cache`` and DMN's ``update_memory_bank``.

    Args:
        labels: ``[M]`` int pseudo-labels.
        keys: ``[M]`` float (entropies).
        capacity: entries per class (>= 1).
        eligible: ``[M]`` bool, which queries may enter (None: all).
    """
    n = int(labels.shape[0])
    out = Replay(n)
    members: dict[int, list[int]] = {}
    keys = np.asarray(keys, dtype=np.float64)
    for t in range(n):
        if eligible is not None and not eligible[t]:
            continue
        slot = members.setdefault(int(labels[t]), [])
        if len(slot) < capacity:
            slot.append(t)
        else:
            # the largest key; among equal keys the latest added (its position is the largest)
            worst = max(range(len(slot)), key=lambda j: (keys[slot[j]], slot[j]))
            victim = slot[worst]
            if not keys[t] < keys[victim]:
                continue
            slot[worst] = t
            out.evicted_at[victim] = t
            out.replaced[t] = victim
        out.admitted[t] = True
    return out


def entropy(probs: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Shannon entropy in nats of each row of ``probs`` ``[M, C]`` (``-Σ p log(p + eps)``);
    with ``eps = 0`` the ``0 · log 0`` terms count as 0."""
    if eps:
        return -(probs * torch.log(probs + eps)).sum(dim=1)
    return -torch.special.xlogy(probs, probs).sum(dim=1)


class StreamingClassifier(CLIPFeatureClassifier):
    """A classifier that adapts while it streams over its queries (no labelled support).

    ``fit`` learns the text classifier only. :meth:`decision_function` / :meth:`predict` stream
    over ``X`` **in the given order**, each call from an empty memory: the same ``X`` in the same
    order gives the same output, and a different order may not. :meth:`stream` also returns what
    the memories did (sizes, evictions); nothing of a stream is kept on the model. No projector: SSP's projector is
    fitted on labelled support patches, which a test-time stream does not have.
    Subclasses define ``_stream(x) -> (logits, summary)`` and their ``_parameter_constraints``
    (starting from :data:`STREAM_CONSTRAINTS`).
    """

    _needs_support = False
    _fit_time_params: tuple[str, ...] = ()
    projector = None  # not a parameter: nothing of SSP's projector exists without support

    def fit(self, image_features: ArrayLike | None = None, labels: ArrayLike | None = None, *,
            text_features: ArrayLike, patch_features: ArrayLike | None = None):
        """Store the text classifier ``[C, D]``. As for zero-shot CLIP, support ``image_features``
        ``[N, D]`` and ``labels`` ``[N]``, when given, are only checked, never used: a test-time
        method learns from its stream alone. ``patch_features`` are refused (no projector)."""
        if patch_features is not None:
            raise ValueError(f"{type(self).__name__} takes no patch_features: it has no SSP projector "
                             "(SSP is fitted on labelled support patches, a test-time stream has none)")
        return super().fit(image_features, labels, text_features=text_features)

    def _zero_shot(self, x: torch.Tensor) -> torch.Tensor:
        """``logit_scale · x Wᵀ`` ``[M, C]`` for normalised queries ``x``."""
        return float(self.logit_scale) * (x @ self._torch.text_features_.T)

    def stream(self, X: ArrayLike) -> tuple[ArrayLike, dict]:
        """Stream over ``X`` ``[M, D]`` in order: ``(logits [M, C] of X's kind, summary)``, the
        summary counting what each memory admitted, evicted and held at the end."""
        self._check_fitted()
        self._validate_params()  # set_params may have changed them after fit
        logits, summary = self._stream(self._queries(X))
        return like_input(logits, X), summary

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        self._validate_params()  # set_params may have changed them after fit
        return self._stream(x)[0]

    def _stream(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError
