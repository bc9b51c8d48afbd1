"""Text-classifier files: one ``[C, D]`` or ``[D, C]`` tensor in a ``.pt`` / ``.npy`` /
``.safetensors`` file, read as ``[C, D]`` float32 and checked by the rule every estimator applies
(:func:`ssp._utils.arrays.check_text_features`). ``ssp-fewshot --text-features`` and
``ssp-unmix analyze --text-features`` both read through :func:`load_text_features`.

Per-prompt text features ``[C, P, D]`` (each class's prompts encoded one by one, for methods that
weigh prompts: TIMO) come from :func:`encode_prompts` (kept in the feature store, keyed on the
prompts and the prompt file's sha256) or from a file (:func:`load_prompt_features`,
``ssp-fewshot --prompt-features``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ssp._utils.arrays import check_text_features, TEXT_LAYOUTS
from ssp._utils.normalize import unit_norm_axis
from ssp._utils.torch_files import load_torch_file
from ssp._io import file_sha256

__all__ = ["load_text_features", "KNOWN_WIDTHS", "encode_prompts", "prompt_tensor", "load_prompt_features",
           "prompt_features_file", "stored_prompt_features"]

_TEXT_SUFFIXES = (".pt", ".pth", ".npy", ".safetensors")
#: Embedding widths D of the CLIP models ssp knows; with neither C nor D given, the side of a
#: file that has one of these widths (and the other side does not) is D.
KNOWN_WIDTHS = (256, 384, 512, 640, 768, 1024, 1152, 1280)


def _read_any(path: Path) -> torch.Tensor:
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            obj = torch.from_numpy(np.load(path, allow_pickle=False))
        elif suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
            names = [k for k in ("text_features", "text_weights", "weight") if k in tensors]
            if len(tensors) == 1:
                obj = next(iter(tensors.values()))
            elif names:
                obj = tensors[names[0]]
            else:
                raise ValueError(f"it holds {sorted(tensors)}; save one tensor, or name it 'text_features'")
        else:
            obj = load_torch_file(path, what="tensor file")
            if isinstance(obj, dict) and len(obj) == 1:
                obj = next(iter(obj.values()))
    except ValueError as err:
        message = str(err)
        raise ValueError(message if message.startswith(str(path)) else
                         f"cannot read text features from {path}: {message}") from None
    except Exception as err:  # corrupt .npy / .safetensors
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(f"{path} is not a tensor file: corrupt or not saved by "
                         f"{'numpy.save' if suffix == '.npy' else 'safetensors'} "
                         f"({type(err).__name__}{': ' + first if first else ''})") from None
    if not isinstance(obj, torch.Tensor):
        raise ValueError(f"{path} holds a {type(obj).__name__}, expected one [C, D] or [D, C] tensor")
    return obj


def _ambiguous(path: Path, why: str) -> ValueError:
    return ValueError(f"text-features file {path}: {why}; pass layout='CD' or 'DC' "
                      "(--text-layout CD or DC)")


def _auto_layout(path: Path, t: torch.Tensor, n_classes: int | None, dim: int | None) -> str:
    rows, cols = t.shape
    if n_classes is not None and dim is not None:
        if n_classes == dim:
            raise _ambiguous(path, f"it is square ({n_classes} x {dim}): C = D, so its orientation "
                                   "cannot be told from the shape")
        return "CD" if (rows, cols) == (n_classes, dim) else "DC"
    if n_classes is not None or dim is not None:
        known_rows = rows == (n_classes if n_classes is not None else dim)
        known_cols = cols == (n_classes if n_classes is not None else dim)
        if known_rows != known_cols:
            rows_are_classes = known_rows == (n_classes is not None)
            return "CD" if rows_are_classes else "DC"
    unit = unit_norm_axis(t.to(torch.float64)) if t.is_floating_point() else None
    if unit in ("rows", "columns"):
        return "CD" if unit == "rows" else "DC"   # class vectors are the unit-norm ones
    rows_d, cols_d = rows in KNOWN_WIDTHS, cols in KNOWN_WIDTHS
    if rows_d != cols_d:
        return "DC" if rows_d else "CD"
    raise _ambiguous(path, f"shape {tuple(t.shape)}: neither side holds unit-norm class vectors nor only "
                           "one side is a known embedding width, so classes cannot be told from D")


def load_text_features(path: str | Path, n_classes: int | None = None, dim: int | None = None,
                       layout: str = "auto", *, return_layout: bool = False):
    """A text classifier file as ``[C, D]`` float32 (float16 / bfloat16 / float64 files are
    converted).

    Args:
        path: ``.pt`` / ``.pth`` (one tensor, or a dict holding one), ``.npy`` or
            ``.safetensors`` (one tensor, or one named ``text_features``).
        n_classes, dim: ``C`` and ``D`` when known (e.g. from a feature cache); the file's shape
            must then be ``[C, D]`` or ``[D, C]``.
        layout: ``"CD"`` (one row per class), ``"DC"`` (one column per class: the Tip-Adapter /
            APE layout) or ``"auto"``: read from ``C`` / ``D`` when given (a square ``C == D``
            file is refused), else from the side whose vectors have unit norm (the class
            vectors), else from the side that is a known embedding width (:data:`KNOWN_WIDTHS`).

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable file, wrong shape, undecidable orientation, or a class vector
            that is zero or not finite (one line naming the file).

    Returns:
        ``[C, D]`` float32; with ``return_layout`` the pair ``(tensor, "CD" or "DC")``, the
        layout the file was read in.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"text-features file {path} not found")
    if path.suffix.lower() not in _TEXT_SUFFIXES:
        raise ValueError(f"text-features file {path}: use one of {', '.join(_TEXT_SUFFIXES)}")
    if layout != "auto" and layout not in TEXT_LAYOUTS:
        raise ValueError(f"text layout must be auto, CD or DC, got {layout!r}")
    t = _read_any(path)
    if t.ndim != 2:
        raise ValueError(f"text-features file {path} has shape {tuple(t.shape)}; expected one 2-D tensor "
                         "[C, D] or [D, C]")
    expected = [v for v in (n_classes, dim) if v is not None]
    if len(expected) == 2 and sorted(t.shape) != sorted(expected):
        raise ValueError(f"text-features file {path} has shape {tuple(t.shape)}; expected [C, D] = "
                         f"[{n_classes}, {dim}] or [D, C] (C from the cache's values file, D from its keys)")
    if len(expected) == 1 and expected[0] not in t.shape:
        what = f"C = {n_classes} classes" if n_classes is not None else f"D = {dim}"
        raise ValueError(f"text-features file {path} has shape {tuple(t.shape)}; expected one side to be {what}")
    if layout == "auto":
        layout = _auto_layout(path, t, n_classes, dim)
    t = t.to(torch.float32)
    out = check_text_features(t, name=f"text-features file {path}", layout=layout).contiguous()
    if n_classes is not None and out.shape[0] != n_classes or dim is not None and out.shape[1] != dim:
        raise ValueError(f"text-features file {path} read as layout {layout} gives [C, D] = "
                         f"{list(out.shape)}, expected C = {n_classes}, D = {dim}; use the other layout")
    return (out, layout) if return_layout else out


# ---------------------------------------------------------------------------- per-prompt features

def encode_prompts(backbone, sentences: list[list[str]], batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Every prompt of every class encoded on its own and L2-normalised (no averaging):
    ``{"prompts": [S, D] float32, "counts": [C] int64}`` (class ``c``'s prompts are the next
    ``counts[c]`` rows), what the feature store keeps for methods that weigh prompts (TIMO)."""
    flat = [s for class_sentences in sentences for s in class_sentences]
    embeddings = backbone.encode_text(flat, batch_size=batch_size).float()
    embeddings = embeddings / embeddings.norm(dim=1, keepdim=True).clamp_min(1e-12)
    counts = torch.tensor([len(s) for s in sentences], dtype=torch.int64)
    return {"prompts": embeddings.cpu().contiguous(), "counts": counts}


def prompt_tensor(prompts: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """``[S, D]`` prompts with per-class ``counts`` ``[C]`` -> ``([C, P, D], info)`` with ``P`` the
    smallest count: every class keeps its first ``P`` prompts (the released TIMO code's rule for
    classes with unequal numbers of sentences); ``info`` records ``P`` and what was left out."""
    counts_list = [int(c) for c in counts]
    if not counts_list or min(counts_list) < 1:
        raise ValueError("every class needs at least one prompt")
    n_min = min(counts_list)
    offsets = [0]
    for c in counts_list[:-1]:
        offsets.append(offsets[-1] + c)
    out = torch.stack([prompts[o:o + n_min] for o in offsets])
    info = {"prompts_per_class": n_min, "prompts_per_class_max": max(counts_list),
            "prompts_left_out": sum(counts_list) - n_min * len(counts_list)}
    return out, info


def load_prompt_features(path: str | Path, n_classes: int, dim: int) -> torch.Tensor:
    """A ``[C, P, D]`` per-prompt text-feature file (``.pt`` / ``.npy`` / ``.safetensors``, one
    tensor, or one named ``prompt_features``) as float32 with unit prompts; one-line errors name
    the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"prompt-features file {path} not found")
    if path.suffix.lower() not in _TEXT_SUFFIXES:
        raise ValueError(f"prompt-features file {path}: use one of {', '.join(_TEXT_SUFFIXES)}")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except Exception as err:
            raise ValueError(f"{path} is not a safetensors file ({type(err).__name__})") from None
        t = tensors.get("prompt_features", next(iter(tensors.values())) if len(tensors) == 1 else None)
        if t is None:
            raise ValueError(f"prompt-features file {path} holds {sorted(tensors)}; save one tensor or name it "
                             "'prompt_features'")
    else:
        t = _read_any(path)
    if t.ndim != 3 or t.shape[0] != n_classes or t.shape[2] != dim or t.shape[1] < 1:
        raise ValueError(f"prompt-features file {path} has shape {tuple(t.shape)}; expected [C, P, D] = "
                         f"[{n_classes}, P, {dim}] (C classes and D of the features, P >= 1 prompts per class)")
    t = t.to(torch.float32)
    norms = t.norm(dim=2)
    bad = ~torch.isfinite(norms) | (norms == 0)
    if bool(bad.any()):
        c, p = torch.nonzero(bad)[0].tolist()
        raise ValueError(f"prompt-features file {path}: prompt [{c}, {p}] is zero or not finite")
    return (t / norms[:, :, None]).contiguous()


def prompt_features_file(path: str | Path | None, n_classes: int, dim: int) -> tuple[torch.Tensor | None, dict | None]:
    """:func:`load_prompt_features` and what a run records about the file (path, sha256, ``P``);
    ``(None, None)`` for no file."""
    if path is None:
        return None, None
    path = Path(path).expanduser()
    tensor = load_prompt_features(path, n_classes, dim)
    return tensor, {"file": str(path.resolve()), "sha256": file_sha256(path), "prompts_per_class": int(tensor.shape[1])}


def stored_prompt_features(store, backbone, classnames, prompts, *, recompute: bool = False
                           ) -> tuple[torch.Tensor | None, dict | None]:
    """Each class's prompts (a resolved :class:`ssp.data.prompts.Prompts`) encoded one by one
    through the feature ``store``, keyed on the backbone, the sentences and the prompt file's
    sha256: ``([C, P, D], info)`` (:func:`prompt_tensor`), or ``(None, None)`` when every class
    has a single prompt."""
    if max(len(s) for s in prompts.sentences) < 2:
        return None, None
    key = {"kind": "prompt_features", "backbone": backbone.identity, "classnames": list(classnames),
           "prompts": prompts.spec if prompts.file is None else None, "file_sha256": prompts.file_sha256,
           "sentences": prompts.sentences}
    stored = store.get_or_compute(key, lambda: encode_prompts(backbone, prompts.sentences), recompute=recompute)
    return prompt_tensor(stored["prompts"], stored["counts"])
