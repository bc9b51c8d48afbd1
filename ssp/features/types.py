"""The data type the feature stage hands the methods: :class:`Features`, one split's tensors."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Features:
    """One split's features: ``image_features`` ``[N, D]`` (global, L2-normalised), ``labels``
    ``[N]``, optional ``patch_features`` ``[N, L, D]``, optional ``view_features`` ``[E, N, D]``
    (each augmented pass's L2-normalised global feature, of which ``image_features`` is the
    normalised mean; training inputs of the fine-tuned adapters) and optional ``kept`` ``[N]``
    (indices into the requested sample list when unreadable images were skipped).

    :meth:`from_dict` reads the feature store's tensors (named ``"global"``, ``"labels"``,
    ``"local"``, ``"views"``, ``"kept"`` in the file)."""

    image_features: torch.Tensor
    labels: torch.Tensor
    patch_features: torch.Tensor | None = None
    view_features: torch.Tensor | None = None
    kept: torch.Tensor | None = None

    # the feature store's tensor names (a file format) -> field names; mapped here only
    _FILE_NAMES = {"global": "image_features", "labels": "labels", "local": "patch_features",
                   "views": "view_features", "kept": "kept"}

    @classmethod
    def from_dict(cls, d: dict[str, torch.Tensor]) -> "Features":
        """From the tensors of :func:`ssp.features.store.cached_features` / :func:`ssp.features.extract.extract_features`."""
        fields = {field: d.get(name) for name, field in cls._FILE_NAMES.items()}
        fields["image_features"], fields["labels"] = d["global"], d["labels"].long()
        return cls(**fields)

    def subset(self, index: torch.Tensor) -> "Features":
        return Features(self.image_features[index], self.labels[index],
                        None if self.patch_features is None else self.patch_features[index],
                        None if self.view_features is None else self.view_features[:, index],
                        None if self.kept is None else self.kept[index])

