"""Where a backbone's weights come from: open_clip tags, local checkpoints, ``hf-hub:`` repos or
random initialisation; QuickGELU detection from the weights; one-line errors for offline or
missing weights; the backbone's label in run records (:func:`backbone_label`)."""
from __future__ import annotations

import difflib
import json
import logging
import os
import socket
import urllib.parse
import urllib.request
import zipfile
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import torch

from ssp._checks import is_random_weights, option
from ssp._io import file_sha256
from ssp._utils.torch_files import is_torch_file

logger = logging.getLogger(__name__)


RANDOM_INIT_SEED = 0


CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


HF_HUB_PREFIX = "hf-hub:"


def _open_clip():
    import open_clip  # imported lazily: ``import ssp`` stays cheap

    return open_clip


def _resolve_architecture(name: str) -> tuple[str, str | None, dict | None]:
    """``name`` -> (open_clip model name, schema, model config).

    ``name`` is an open_clip model name (``/`` accepted for ``-``), ``hf-hub:org/repo`` (schema
    ``"hf-hub"``, config unknown until download) or a path to an open_clip model-config JSON,
    which is registered with ``open_clip.add_model_config`` under its file stem.
    """
    open_clip = _open_clip()
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    name = name.strip()
    if name.startswith(HF_HUB_PREFIX):
        if not name[len(HF_HUB_PREFIX):]:
            raise ValueError(f"model name {name!r} has an empty Hugging Face hub id after 'hf-hub:'")
        return name, "hf-hub", None
    path = Path(name).expanduser()
    if name.lower().endswith(".json") or path.is_file():
        return _register_config_file(path)
    oc_name = name.replace("/", "-")
    cfg = open_clip.get_model_config(oc_name)
    if cfg is None:
        close = difflib.get_close_matches(oc_name, open_clip.list_models(), n=5)
        raise ValueError(
            f"unknown model {name!r}: not an open_clip model name, an 'hf-hub:org/repo' id or an "
            f"existing open_clip model-config .json file. Close names: {close or 'none'}; "
            "see open_clip.list_models() for all."
        )
    return oc_name, None, cfg


def _register_config_file(path: Path) -> tuple[str, None, dict]:
    open_clip = _open_clip()
    if not path.is_file():
        raise FileNotFoundError(f"model config file {str(path)!r} not found")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"model config {str(path)!r} is not valid JSON: {err}") from err
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if not isinstance(cfg, dict) or k not in cfg]
    if missing:
        raise ValueError(
            f"model config {str(path)!r} lacks {missing}; an open_clip model config needs "
            "'embed_dim', 'vision_cfg' and 'text_cfg' (see open_clip/model_configs/*.json)"
        )
    stem = path.stem
    registered = open_clip.get_model_config(stem)
    if registered is None:
        open_clip.add_model_config(path)
        registered = open_clip.get_model_config(stem)
    if registered != cfg:
        raise ValueError(
            f"model config {str(path)!r} would be registered as {stem!r}, but open_clip already "
            f"has a different model of that name; rename the file"
        )
    return stem, None, cfg


def _classify_weights(oc_name: str, schema: str | None, pretrained: str | None) -> tuple[str, Any]:
    """-> ("random", None) | ("tag", pretrained cfg dict) | ("file", Path) | ("hf-hub", None)."""
    open_clip = _open_clip()
    if schema == "hf-hub":
        if pretrained is None:
            return "hf-hub", None
        if is_random_weights(pretrained):
            return "random", None
        raise ValueError(
            f"pretrained={pretrained!r} cannot be combined with {oc_name!r}: an 'hf-hub:' model "
            f"brings its own weights. {option('Pass pretrained=None (hub weights) or', 'Omit --pretrained (hub weights) or pass')} "
            f"{option(repr('none'), '--pretrained none')} (random init)."
        )
    if is_random_weights(pretrained):
        return "random", None
    if not isinstance(pretrained, str):
        raise TypeError(f"pretrained must be a string or None, got {type(pretrained).__name__}")
    tag_cfg = open_clip.get_pretrained_cfg(oc_name, pretrained)
    if tag_cfg:
        return "tag", tag_cfg
    path = Path(pretrained).expanduser()
    if path.is_file():
        check_checkpoint_file(path)
        return "file", path.resolve()
    if path.suffix.lower() in CHECKPOINT_SUFFIXES or os.sep in pretrained or path.exists():
        raise FileNotFoundError(f"checkpoint file {pretrained!r} not found (or not a file)")
    tags = open_clip.list_pretrained_tags_by_model(oc_name)
    raise ValueError(
        f"pretrained={pretrained!r} is neither a pretrained tag of {oc_name!r} "
        f"(available: {tags or 'none'}) nor an existing checkpoint file "
        f"({', '.join(CHECKPOINT_SUFFIXES)})"
    )




def check_checkpoint_file(path: str | os.PathLike) -> None:
    """Refuse, in one line, a file that cannot be a checkpoint (a text file, random bytes): read
    from its first bytes only, before anything is loaded or hashed. A ``.safetensors`` file must
    start with its JSON header; any other must be a ``torch.save`` / TorchScript archive (zip) or
    a legacy pickle."""
    import struct


    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        try:
            with open(path, "rb") as f:
                head = f.read(9)
            ok = len(head) == 9 and struct.unpack("<Q", head[:8])[0] > 0 and head[8:9] == b"{"
        except OSError:
            ok = False
        what = "a safetensors file"
    else:
        ok = is_torch_file(path)
        what = "a checkpoint saved by torch.save (or a TorchScript archive)"
    if not ok:
        raise ValueError(f"checkpoint {str(path)!r} is not {what}: corrupt, truncated or another kind of file; "
                         f"pass a state dict (.pt/.pth/.bin), a .safetensors file or an open_clip tag")


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """True for a TorchScript zip archive (e.g. OpenAI's original ``RN50.pt``), read from the
    zip directory only (no unpickling)."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


@lru_cache(maxsize=1)
def _known_checkpoint_hashes() -> tuple[tuple[str, str, str, bool], ...]:
    """(sha256 prefix, model, tag, quick_gelu) for open_clip's published checkpoint URLs whose
    file names carry their sha256 (OpenAI's full digest, mlfoundations' 8-hex prefix)."""
    open_clip = _open_clip()
    rows = []
    for model, tag in open_clip.list_pretrained():
        cfg = open_clip.get_pretrained_cfg(model, tag)
        url = cfg.get("url", "")
        if "openaipublic" in url:
            prefix = url.split("/")[-2]
        elif "mlfoundations" in url:
            prefix = os.path.splitext(os.path.basename(url))[0].split("-")[-1]
        else:
            continue
        if len(prefix) >= 8 and all(c in "0123456789abcdef" for c in prefix.lower()):
            rows.append((prefix.lower(), model, tag, bool(cfg.get("quick_gelu", False))))
    return tuple(rows)


def identify_checkpoint(path: str | os.PathLike) -> tuple[str, str, bool] | None:
    """(model, tag, quick_gelu) of a published open_clip/OpenAI checkpoint recognised by its
    sha256, or None."""
    digest = file_sha256(path)
    for prefix, model, tag, quick_gelu in _known_checkpoint_hashes():
        if digest.startswith(prefix):
            return model, tag, quick_gelu
    return None


def _weights_quick_gelu(kind: str, info: Any, pretrained: str | None) -> tuple[bool | None, str]:
    """What the weights say about QuickGELU: (True/False/None if unknown, description)."""
    if kind == "tag":
        return bool(info.get("quick_gelu", False)), f"the pretrained tag {pretrained!r}"
    if kind == "file":
        if is_torchscript_archive(info):
            return True, f"{str(info)!r} (an OpenAI TorchScript archive)"
        known = identify_checkpoint(info)
        if known is not None:
            return known[2], f"{str(info)!r} (recognised as {known[0]}/{known[1]} by its sha256)"
    return None, ""


def resolve_quick_gelu(
    name: str, pretrained: str | None = None, quick_gelu: bool | None = None
) -> tuple[bool | None, str | None]:
    """Decide whether the model must use QuickGELU activations.

    Returns ``(decision, warning)``: ``decision`` is True/False, or None for an ``hf-hub:`` model
    with ``quick_gelu=None`` (its hub config decides); ``warning`` is a message when a mismatch
    with the weights is likely, else None. Rules, first match wins:

    1. ``quick_gelu`` given explicitly -> it (warning if the weights are known to disagree);
    2. the weights' own setting, when known: the open_clip tag's ``quick_gelu`` (True for
       ``openai``), True for an OpenAI TorchScript archive, or the setting of a published
       checkpoint recognised by its sha256;
    3. the model config (True for the ``-quickgelu`` names); for an unrecognised local file
       whose config says GELU, with a warning (OpenAI weights need QuickGELU).
    """
    oc_name, schema, cfg = _resolve_architecture(name)
    kind, info = _classify_weights(oc_name, schema, pretrained)
    return _decide_quick_gelu(oc_name, cfg, kind, info, pretrained, quick_gelu)


def _decide_quick_gelu(oc_name: str, cfg: dict | None, kind: str, info: Any, pretrained: str | None,
                       quick_gelu: bool | None) -> tuple[bool | None, str | None]:
    """:func:`resolve_quick_gelu` on an already resolved architecture and weights."""
    config_qg = None if cfg is None else bool(cfg.get("quick_gelu", False))
    evidence, source = _weights_quick_gelu(kind, info, pretrained)
    act = {True: "QuickGELU", False: "GELU"}
    if quick_gelu is not None:
        quick_gelu = bool(quick_gelu)
        if evidence is not None and evidence != quick_gelu:
            return quick_gelu, (
                f"{option(f'quick_gelu={quick_gelu}', '--quick-gelu ' + ('on' if quick_gelu else 'off'))} but the weights {source} were trained with "
                f"{act[evidence]}: features will be degraded. {option('Leave quick_gelu=None', 'Use --quick-gelu auto')} "
                "to follow the weights."
            )
        return quick_gelu, None
    if evidence is not None:
        return evidence, None
    if kind == "file" and not config_qg:
        return False, (
            f"cannot tell whether checkpoint {str(info)!r} was trained with QuickGELU; using the "
            f"{oc_name!r} config's GELU. OpenAI CLIP weights (and other QuickGELU-trained ones) need "
            f"{option('quick_gelu=True', '--quick-gelu on')} (or the '-quickgelu' model name); "
            f"{option('pass quick_gelu explicitly', 'pass --quick-gelu on or off')} to silence this."
        )
    return config_qg, None


def _check_supported_config(oc_name: str, cfg: dict | None) -> None:
    if cfg is None:
        return
    vision_cfg = cfg.get("vision_cfg", {})
    if vision_cfg.get("timm_model_name"):
        raise NotImplementedError(
            f"{oc_name!r} has a timm vision tower ({vision_cfg['timm_model_name']}); ssp extracts "
            "local features only from open_clip's ModifiedResNet and VisionTransformer towers"
        )
    if vision_cfg.get("attentional_pool"):
        raise NotImplementedError(f"{oc_name!r} uses an attentional pooler; its local features are not supported")


class _DropMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


@contextmanager
def _quiet_random_init_log(active: bool) -> Iterator[None]:
    """Hide open_clip's 'Model initialized randomly' log while weights are loaded right after."""
    log_filter = _DropMessage("No pretrained weights loaded")
    root = logging.getLogger()
    if active:
        root.addFilter(log_filter)
    try:
        yield
    finally:
        if active:
            root.removeFilter(log_filter)


_PROBE_TIMEOUT_S = 3.0


def _hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be reached right now, or None when it can.

    ``HF_HUB_OFFLINE=1`` answers at once; otherwise one TCP connection to the hub endpoint (or to
    the HTTPS proxy, when one is configured) with a short timeout. Offline, this replaces
    huggingface_hub's retries (about a minute of repeated warnings) by an immediate answer.
    """
    try:
        from huggingface_hub import constants
    except ImportError:
        return None  # open_clip then downloads by URL (urllib fails fast on its own)
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    target = urllib.request.getproxies().get("https") or constants.ENDPOINT
    url = urllib.parse.urlsplit(target if "://" in target else f"http://{target}")
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if not host:
        return None
    try:
        socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S).close()
    except OSError as err:
        return f"cannot connect to {host}:{port}: {err.strerror or err}"
    return None


@contextmanager
def _hub_offline_mode(active: bool) -> Iterator[None]:
    """huggingface_hub's offline mode while active: files already in the cache are still found,
    nothing is requested (so nothing is retried)."""
    if not active:
        yield
        return
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _download_tag(oc_name: str, tag: str, tag_cfg: dict, cache_dir: str | None) -> Path:
    open_clip = _open_clip()
    uses_hub = bool(tag_cfg.get("hf_hub")) and open_clip.pretrained.has_hf_hub()
    offline = _hub_unreachable() if uses_hub else None
    try:
        with _hub_offline_mode(offline is not None):
            path = open_clip.pretrained.download_pretrained(tag_cfg, cache_dir=cache_dir)
    except Exception as err:  # network, hub and file-system errors all end here
        source = tag_cfg.get("hf_hub") or tag_cfg.get("url") or "unknown"
        why = (f"the Hugging Face hub is unreachable ({offline}) and the weights are not in the "
               f"local cache" if offline else f"{type(err).__name__}: {err}")
        quick = bool(tag_cfg.get("quick_gelu", False))  # the local file cannot tell (OpenAI weights)
        local = option(f"load_backbone({oc_name!r}, pretrained='/path/to/checkpoint.pt'"
                       f"{', quick_gelu=True' if quick else ''})",
                       f"--pretrained /path/to/checkpoint.pt{' --quick-gelu on' if quick else ''}")
        cache = option("cache_dir= (or HF_HOME / HF_HUB_CACHE)", "HF_HOME (or HF_HUB_CACHE)")
        raise RuntimeError(
            f"could not download the pretrained weights of model {oc_name!r}, tag {tag!r} "
            f"(source: {source}): {why}. Without network, download the checkpoint elsewhere and "
            f"pass the local file instead of the tag: {local}, or point {cache} at a folder that "
            f"already holds it."
        ) from err
    if not path:
        raise RuntimeError(f"open_clip has no download source for model {oc_name!r}, tag {tag!r}")
    return Path(path)


def _load_torchscript_weights(model: torch.nn.Module, path: Path) -> None:
    """Load an OpenAI-style TorchScript archive's parameters into ``model`` (strict)."""
    open_clip = _open_clip()
    state_dict = torch.jit.load(str(path), map_location="cpu").state_dict()
    own = model.state_dict()
    non_persistent = {n for n, _ in model.named_buffers()} - set(own)
    state_dict = {
        k: v for k, v in state_dict.items()
        if k not in ("input_resolution", "context_length", "vocab_size") and k not in non_persistent
    }
    open_clip.model.resize_pos_embed(state_dict, model)
    model.load_state_dict(state_dict, strict=True)


def _load_weights(model: torch.nn.Module, path: Path, oc_name: str) -> str:
    """Load a local checkpoint into ``model``; returns its format."""
    open_clip = _open_clip()
    fmt = "torchscript" if is_torchscript_archive(path) else (
        "safetensors" if path.suffix.lower() == ".safetensors" else "torch")
    try:
        if fmt == "torchscript":
            _load_torchscript_weights(model, path)
        else:
            open_clip.load_checkpoint(model, str(path), strict=True, weights_only=True, device="cpu")
    except Exception as err:
        import pickle

        if isinstance(err, pickle.UnpicklingError):  # torch's advice to drop weights_only is wrong here
            raise RuntimeError(f"could not load checkpoint {str(path)!r}: it is not a plain state dict "
                               "(corrupt, or it pickles Python objects; weights_only=True refuses those)") from None
        message = " ".join(str(err).split())  # one line (state-dict mismatches list keys over many)
        if len(message) > 1500:
            message = message[:1500] + " ..."
        raise RuntimeError(
            f"could not load checkpoint {str(path)!r} into model {oc_name!r}: {type(err).__name__}: "
            f"{message}. Check that the model name matches the checkpoint's architecture (e.g. RN50 "
            "for OpenAI's RN50.pt); files must be state dicts, safetensors or TorchScript archives "
            "(loaded with weights_only=True)."
        ) from err
    return fmt


def _hub_sha256(oc_name: str, cache_dir: str | None) -> str | None:
    """sha256 of the (already downloaded) hub weights file, or None if it cannot be located."""
    try:
        path = _open_clip().pretrained.download_pretrained_from_hf(oc_name[len(HF_HUB_PREFIX):], cache_dir=cache_dir)
        return file_sha256(path)
    except Exception as err:  # identity then names the repo only
        logger.warning("could not locate the weights file of %s for its sha256: %s", oc_name, err)
        return None


def backbone_label(name: str, pretrained) -> str:
    """``RN50@openai``, ``tiny-rn@none`` (random), ``ViT-B-32@my_ckpt.pt``, ``hf-hub:org/repo``
    from the configured names, before loading any weights: runs with different weights never
    share a results folder or a table row."""
    oc_name, schema, _ = _resolve_architecture(name)
    pre = None if pretrained is None else str(pretrained)
    kind, info = _classify_weights(oc_name, schema, pre)
    if kind == "hf-hub":
        return oc_name
    if kind == "random":
        return f"{oc_name}@none"
    if kind == "file":
        return f"{oc_name}@{Path(str(info)).name}"
    return f"{oc_name}@{pre.strip().lower().replace('-', '_')}"
