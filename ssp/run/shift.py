"""Distribution shift (``ssp-fewshot --eval-on``): test-only target datasets whose classes are a
subset of the source's, mapped onto the source's classes by class id (WordNet id), never by name.

The model is fitted and searched on the source once; each target's test split is then scored with
the logits restricted to the target's classes (:func:`ssp.run.protocols.score_targets`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from ssp.data import get_dataset

__all__ = ["ShiftTarget", "shift_targets"]


@dataclass
class ShiftTarget:
    """A test-only dataset whose classes are a subset of the source's (``--eval-on``)."""

    name: str
    data: object                 # ssp.data.DatasetSplits
    source_index: torch.Tensor   # [C_target]: the source class of each target class


def shift_targets(source, specs: list[str], root) -> list[ShiftTarget]:
    """Read ``--eval-on`` targets (``NAME``: a dataset under ``root``; ``NAME=DIR``: that folder)
    and map each target class onto the source's by class id (WordNet id), never by name."""
    out = []
    for spec in specs:
        name, _, folder = str(spec).partition("=")
        data = get_dataset(name, folder or root)
        if not data.test:
            raise ValueError(f"--eval-on {spec}: {data.root} holds no test image")
        if source.class_ids is None or data.class_ids is None:
            raise ValueError(f"--eval-on {spec}: {source.name} and {data.name} must both have class ids (WordNet "
                             f"ids, as ImageNet and its variants do) to map classes by id; "
                             f"{data.name if data.class_ids is None else source.name} has none")
        index = {c: i for i, c in enumerate(source.class_ids)}
        unknown = [c for c in data.class_ids if c not in index]
        if unknown:
            raise ValueError(f"--eval-on {spec}: {len(unknown)} class(es) of {data.name} are not classes of "
                             f"{source.name} (e.g. {', '.join(unknown[:3])}); a target's classes must be a subset "
                             f"of the source's")
        out.append(ShiftTarget(data.name, data, torch.tensor([index[c] for c in data.class_ids], dtype=torch.long)))
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        raise ValueError(f"--eval-on names a dataset twice: {names}")
    return out
