"""A small synthetic Tip-Adapter cache folder (the published layout), for fast run-loop tests."""
from __future__ import annotations

from pathlib import Path

import torch


def write_tip_cache(folder: Path, *, n_classes: int = 47, shots=(1, 2), dim: int = 8, n_val: int = 6,
                    n_test: int = 5, with_text: bool = True, with_test: bool = True, seed: int = 0) -> Path:
    """keys_<K>shots.pt [D, N] fp16, values [N, C] fp16 one-hot, val/test features with every class
    present (``n_val`` / ``n_test`` per class), text_weights.pt [D, C]; class-structured features so
    the methods beat chance."""
    gen = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    centres = torch.nn.functional.normalize(torch.randn(n_classes, dim, generator=gen), dim=1)

    def draw(n_per_class: int):
        labels = torch.arange(n_classes).repeat_interleave(n_per_class)
        x = centres[labels] + 0.3 * torch.randn(len(labels), dim, generator=gen)
        return torch.nn.functional.normalize(x, dim=1), labels

    for k in shots:
        keys, labels = draw(k)
        torch.save(keys.T.half(), folder / f"keys_{k}shots.pt")
        torch.save(torch.nn.functional.one_hot(labels, n_classes).half(), folder / f"values_{k}shots.pt")
    for split, n in (("val", n_val), ("test", n_test)):
        if split == "test" and not with_test:
            continue
        x, y = draw(n)
        torch.save(x.half(), folder / f"{split}_f.pt")
        torch.save(y, folder / f"{split}_l.pt")
    if with_text:
        text = centres + 0.5 * torch.randn(n_classes, dim, generator=gen)
        torch.save(torch.nn.functional.normalize(text, dim=1).T.contiguous(), folder / "text_weights.pt")
    return folder
