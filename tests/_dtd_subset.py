"""A few real DTD images as a split file (for subprocess CLI tests that must stay fast)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest


def dtd_subset(data_root: Path, folder: Path, *, classes: int = 3, train: int = 4, val: int = 2,
               test: int = 3) -> Path:
    """Write a CoOp split file holding the first ``train``/``val``/``test`` images of each of the first
    ``classes`` DTD classes; returns its path (use with ``--root DATA_ROOT/coop --split-file``)."""
    split = data_root / "coop" / "dtd" / "split_zhou_DescribableTextures.json"
    if not split.is_file():
        pytest.skip(f"{split} not found")
    full = json.loads(split.read_text())
    out = {}
    for part, per_class in (("train", train), ("val", val), ("test", test)):
        counts: dict[int, int] = {}
        out[part] = []
        for rel, label, name in full[part]:
            if label < classes and counts.get(label, 0) < per_class:
                counts[label] = counts.get(label, 0) + 1
                out[part].append([rel, label, name])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "split.json"
    path.write_text(json.dumps(out))
    return path
