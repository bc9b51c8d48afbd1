"""Backbone stage: an open_clip model -> global ``[B, D]`` and local ``[B, L, D]`` image features,
text embeddings and zero-shot text classifiers.

Local features (docs/method.md; the ResNet value path as in MaskCLIP, Zhou et al., ECCV 2022):

* ModifiedResNet (RN50, RN101, ...): the value path of the attention pool at every spatial
  position, ``z_i = c_proj(v_proj(x_i + p_i))`` -- value projection then output projection, with
  the positional embedding ``p_i`` added (bicubically interpolated over the 2-D grid when the
  input is not the native size). The global feature is the usual attention-pool output.
* VisionTransformer (ViT-B-32, ViT-B-16, ...): every patch token after ``ln_post``, multiplied
  by ``proj``; the class token is dropped. The global feature is the usual pooled output
  ``@ proj`` (identical to ``model.encode_image``).

Both come out of one forward pass, raw (not normalised) and float32. Weights come from an
open_clip pretrained tag, a local checkpoint file, the Hugging Face hub, or a seeded random
initialisation (for tests and pipelines without weights; accuracies are then meaningless).

QuickGELU: OpenAI's CLIP weights were trained with QuickGELU, but open_clip 3.3.0 builds
``RN50`` / ``ViT-B-32`` / ... with ``nn.GELU`` even for ``pretrained="openai"`` (it only warns
about the mismatch; the ``-quickgelu`` model names avoid it). ``resolve_quick_gelu`` decides
instead: an explicit ``quick_gelu`` wins; otherwise the weights decide (the tag's training
setting, an OpenAI TorchScript archive, or a file recognised by its sha256 among open_clip's
published checkpoints); otherwise the model config.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import logging
import math
import os
import socket
import urllib.parse
import urllib.request
import warnings
import zipfile
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F

from ssp._checks import PRECISIONS, check_int, is_random_weights, option
from ssp._utils import deprecated_alias, l2_normalize, resolve_device, to_tensor, warn
from ssp.data.base import check_templates, clean_classname

logger = logging.getLogger(__name__)

RANDOM_INIT_SEED = 0
"""Seed of the random initialisation used when no pretrained weights are given."""

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
HF_HUB_PREFIX = "hf-hub:"

# Version strings of the local-feature definitions; they enter the identity (cache keys).
LOCAL_FEATURE_METHODS = {
    "resnet": "attnpool-value-path(c_proj(v_proj(x+pos)))/v1",
    "vit": "patch-tokens(ln_post)@proj/v1",
}

AUGMENT_SCALE = (0.5, 1.0)
AUGMENT_RATIO = (3.0 / 4.0, 4.0 / 3.0)
AUGMENT_FLIP_P = 0.5


# --------------------------------------------------------------------------------------------
# Model names, configs and weights
# --------------------------------------------------------------------------------------------

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
        return "file", path.resolve()
    if path.suffix.lower() in CHECKPOINT_SUFFIXES or os.sep in pretrained or path.exists():
        raise FileNotFoundError(f"checkpoint file {pretrained!r} not found (or not a file)")
    tags = open_clip.list_pretrained_tags_by_model(oc_name)
    raise ValueError(
        f"pretrained={pretrained!r} is neither a pretrained tag of {oc_name!r} "
        f"(available: {tags or 'none'}) nor an existing checkpoint file "
        f"({', '.join(CHECKPOINT_SUFFIXES)})"
    )


_SHA256_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file, streamed, computed once per (path, size, mtime)."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _SHA256_CACHE[key] = digest.hexdigest()
    return _SHA256_CACHE[key]


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


def _resnet_grid_side(size: int) -> int:
    """ModifiedResNet output side for ``size`` input pixels: stride-2 3x3 conv, then four 2x
    average pools (stem, layer2, layer3, layer4), each flooring."""
    side = (size - 1) // 2 + 1
    for _ in range(4):
        side //= 2
    return side


def _grid_of(size: int, vision_cfg: dict) -> int:
    """Side of the local-feature grid for a square input of ``size`` pixels."""
    if isinstance(vision_cfg.get("layers"), (list, tuple)):
        return _resnet_grid_side(size)
    patch = vision_cfg.get("patch_size")
    if not patch:
        raise NotImplementedError(f"cannot tell the patch size from vision_cfg {vision_cfg}")
    return size // int(patch)


def n_patches(model_cfg: dict, image_size: int | None = None) -> int:
    """L, the number of patch (local) features per image, from an open_clip model config (no
    model needed): RN50 / ViT-B-32 at 224 px -> 49, ViT-B-16 -> 196."""
    _check_supported_config("model config", model_cfg)
    vision_cfg = model_cfg["vision_cfg"]
    size = image_size if image_size is not None else vision_cfg.get("image_size", 224)
    return _grid_of(_square(size, "model config"), vision_cfg) ** 2


def num_local_features(model_cfg: dict, image_size: int | None = None) -> int:
    """Deprecated alias of :func:`n_patches`."""
    warnings.warn("ssp.backbone.num_local_features is deprecated; use ssp.backbone.n_patches",
                  DeprecationWarning, stacklevel=2)
    return n_patches(model_cfg, image_size)


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


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------

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
        message = str(err)
        if len(message) > 1500:
            message = message[:1500] + " ..."
        raise RuntimeError(
            f"could not load checkpoint {str(path)!r} into model {oc_name!r}: {type(err).__name__}: "
            f"{message}. Check that the model name matches the checkpoint's architecture (e.g. RN50 "
            "for OpenAI's RN50.pt); files must be state dicts, safetensors or TorchScript archives "
            "(loaded with weights_only=True)."
        ) from err
    return fmt


def _uses_quick_gelu(model: torch.nn.Module) -> bool:
    quick_gelu_cls = _open_clip().transformer.QuickGELU
    return any(isinstance(m, quick_gelu_cls) for m in model.modules())


def _vision_kind(visual: torch.nn.Module, oc_name: str) -> str:
    open_clip = _open_clip()
    if isinstance(visual, open_clip.modified_resnet.ModifiedResNet):
        if getattr(visual, "attnpool", None) is None:
            raise NotImplementedError(f"{oc_name!r}: ModifiedResNet without attention pool is not supported")
        return "resnet"
    if isinstance(visual, open_clip.transformer.VisionTransformer):
        problems = []
        if getattr(visual, "attn_pool", None) is not None:
            problems.append("an attentional pooler")
        if getattr(visual, "pool_type", None) not in ("tok", "avg"):
            problems.append(f"pool_type={getattr(visual, 'pool_type', None)!r}")
        if getattr(visual, "proj", None) is None:
            problems.append("no output projection")
        if problems:
            raise NotImplementedError(
                f"{oc_name!r}: local features of a VisionTransformer with {', '.join(problems)} are "
                "not supported (only the CLIP layout: class-token or average pooling, ln_post, proj)"
            )
        return "vit"
    raise NotImplementedError(
        f"{oc_name!r} has a {type(visual).__name__} vision tower; ssp extracts local features only "
        "from open_clip's ModifiedResNet and VisionTransformer towers"
    )


def load_backbone(
    name: str,
    pretrained: str | None = None,
    *,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    quick_gelu: bool | None = None,
    cache_dir: str | None = None,
) -> "Backbone":
    """Build an open_clip model and wrap it as a :class:`Backbone`.

    Args:
        name: open_clip model name (``RN50``, ``ViT-B-32``, ``ViT-B-16``, ``RN50-quickgelu``,
            ...; ``ViT-B/32`` accepted), ``hf-hub:org/repo``, or a path to an open_clip
            model-config JSON (registered under its file stem).
        pretrained: None / ``"none"`` -> random init with seed ``RANDOM_INIT_SEED`` (loud
            warning: accuracies are meaningless); an open_clip tag (``"openai"``,
            ``"laion2b_s34b_b79k"``, ...); or a local checkpoint (.pt/.pth/.bin/.safetensors,
            OpenAI TorchScript archives included). For ``hf-hub:`` names None means the hub's
            weights.
        device: resolved with ``ssp._utils.resolve_device`` (None/"auto" -> CUDA if available).
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"`` (open_clip's OpenAI-style mixed precision:
            low-precision conv/linear weights, float32 LayerNorm); outputs are always float32.
        quick_gelu: force QuickGELU on/off; None decides from the weights (``resolve_quick_gelu``).
        cache_dir: download cache for pretrained weights.
    """
    open_clip = _open_clip()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device = resolve_device(device)
    oc_name, schema, cfg = _resolve_architecture(name)
    _check_supported_config(oc_name, cfg)
    kind, info = _classify_weights(oc_name, schema, pretrained)

    decision, qg_warning = _decide_quick_gelu(oc_name, cfg, kind, info, pretrained, quick_gelu)
    if qg_warning:
        warn(qg_warning)  # one channel (the warnings module): printed once, filterable, recordable

    checkpoint: Path | None = None
    preprocess_override: dict = {}
    if kind == "tag":
        checkpoint = _download_tag(oc_name, pretrained, info, cache_dir)
        preprocess_keys = set(open_clip.transform.PreprocessCfg.__dataclass_fields__) - {"size"}
        preprocess_override = {k: info[k] for k in preprocess_keys if k in info}
    elif kind == "file":
        checkpoint = info
    elif kind == "random":
        real = option("pretrained='openai'", "--pretrained openai")
        message = (
            f"backbone {oc_name!r} is RANDOMLY INITIALISED (seed {RANDOM_INIT_SEED}): no pretrained "
            f"weights were given, so features are meaningless and accuracies mean nothing. Pass "
            f"{real} (or another tag) "
            f"or a local checkpoint file for real results."
        )
        warn(message)

    create_kwargs: dict[str, Any] = {}
    if decision is True:
        create_kwargs["force_quick_gelu"] = True
    elif decision is False and (cfg is None or cfg.get("quick_gelu", False)):
        create_kwargs["quick_gelu"] = False  # explicit override of a '-quickgelu' / hub config
    if preprocess_override:
        create_kwargs["force_preprocess_cfg"] = preprocess_override

    hub_offline = _hub_unreachable() if kind == "hf-hub" else None
    with torch.random.fork_rng(devices=[]), _quiet_random_init_log(checkpoint is not None), \
            _hub_offline_mode(hub_offline is not None):
        torch.manual_seed(RANDOM_INIT_SEED)
        try:
            model = open_clip.create_model(
                oc_name,
                pretrained=None,
                load_weights=kind != "random",
                precision=precision,
                device=device,
                cache_dir=cache_dir,
                **create_kwargs,
            )
        except Exception as err:
            if schema != "hf-hub":
                raise
            why = (f"the hub is unreachable ({hub_offline}) and the repo is not in the local cache"
                   if hub_offline else f"{type(err).__name__}: {err}")
            raise RuntimeError(
                f"could not load {oc_name!r} from the Hugging Face hub: {why}. Without network, "
                f"build the architecture from a local open_clip model-config .json and pass the weights "
                f"as a local file ({option('pretrained=' + repr('/path/to/checkpoint.pt'), '--pretrained /path/to/checkpoint.pt')}), "
                f"or set {option('cache_dir= or HF_HOME', 'HF_HOME')} to a cache that holds the repo."
            ) from err

    weights: dict[str, Any]
    if kind == "random":
        weights = {"source": "random", "seed": RANDOM_INIT_SEED}
    elif kind == "hf-hub":
        with _hub_offline_mode(hub_offline is not None):  # the file is cached by now
            sha256 = _hub_sha256(oc_name, cache_dir)
        weights = {"source": "hf-hub", "id": oc_name[len(HF_HUB_PREFIX):], "sha256": sha256}
    else:
        fmt = _load_weights(model, checkpoint, oc_name)
        if kind == "tag":
            weights = {"source": "open_clip-tag", "tag": pretrained.strip().lower().replace("-", "_"),
                       "hf_hub": info.get("hf_hub", ""), "url": info.get("url", "")}
        else:
            weights = {"source": "file", "sha256": file_sha256(checkpoint), "format": fmt}

    model.eval()
    model.requires_grad_(False)
    vision_kind = _vision_kind(model.visual, oc_name)
    tokenizer = open_clip.get_tokenizer(oc_name, cache_dir=cache_dir)
    preprocess_cfg = dict(open_clip.get_model_preprocess_cfg(model))
    image_size = _square(preprocess_cfg.get("size", getattr(model.visual, "image_size", 224)), oc_name)

    identity = {
        "model": oc_name,
        "model_config": cfg,
        "quick_gelu": _uses_quick_gelu(model),
        "precision": precision,
        "image_size": image_size,
        "weights": weights,
        "local_features": LOCAL_FEATURE_METHODS[vision_kind],
        "open_clip_version": open_clip.__version__,
    }
    backbone = Backbone(
        model,
        tokenizer,
        model_name=oc_name,
        pretrained=None if kind == "random" else pretrained,
        device=device,
        precision=precision,
        image_size=image_size,
        preprocess_cfg=preprocess_cfg,
        identity=identity,
        vision_kind=vision_kind,
    )
    logger.info("loaded backbone %s (weights %s) on %s, %s", oc_name, weights, device, precision)
    return backbone


def _hub_sha256(oc_name: str, cache_dir: str | None) -> str | None:
    """sha256 of the (already downloaded) hub weights file, or None if it cannot be located."""
    try:
        path = _open_clip().pretrained.download_pretrained_from_hf(oc_name[len(HF_HUB_PREFIX):], cache_dir=cache_dir)
        return file_sha256(path)
    except Exception as err:  # identity then names the repo only
        logger.warning("could not locate the weights file of %s for its sha256: %s", oc_name, err)
        return None


def _square(size: Any, oc_name: str) -> int:
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise NotImplementedError(f"{oc_name!r}: non-square image size {tuple(size)} is not supported")
        size = size[0]
    return int(size)


def _to_rgb(image):
    """PIL image -> RGB (module-level so DataLoader workers can pickle the transform)."""
    return image.convert("RGB") if getattr(image, "mode", "RGB") != "RGB" else image


def _interpolate_grid(pos: torch.Tensor, native: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """Positional embedding ``[1 + h0*w0, C]`` (leading class/mean row, then the grid row-major)
    -> ``[1 + h*w, C]`` for a ``grid = (h, w)``; bicubic over the 2-D grid, as open_clip's
    ``resize_pos_embed``. Unchanged at the native grid."""
    if tuple(grid) == tuple(native):
        return pos
    lead, cells = pos[:1], pos[1:]
    cells = cells.float().reshape(1, native[0], native[1], -1).permute(0, 3, 1, 2)
    cells = F.interpolate(cells, size=grid, mode="bicubic", align_corners=False, antialias=True)
    cells = cells.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pos.dtype)
    return torch.cat([lead, cells], dim=0)


# --------------------------------------------------------------------------------------------
# The backbone
# --------------------------------------------------------------------------------------------

class Backbone:
    """An open_clip model with the feature extraction ssp needs. Build with :func:`load_backbone`.

    Attributes:
        model: the open_clip model (eval mode, no grad).
        tokenizer: its open_clip tokenizer.
        model_name, pretrained, device, precision: as loaded.
        n_features: D, the joint embedding width (``embed_dim`` is a deprecated alias).
        image_size: native input side in pixels.
        n_patches: L, the number of patch features per image at ``image_size``
            (``num_local_features`` is a deprecated alias).
        preprocess: open_clip's eval transform (PIL -> ``[3, S, S]``): bicubic resize of the shorter
            side, centre crop, RGB, tensor, normalise with the model's mean/std.
        augment: training augmentation (the cache augmentation of Tip-Adapter, Zhang et al., ECCV 2022): RGB, RandomResizedCrop(S, scale=(0.5, 1),
            bicubic), RandomHorizontalFlip, tensor, normalise.
        identity: JSON-able description of everything that changes the features (cache keys).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        model_name: str,
        pretrained: str | None,
        device: torch.device,
        precision: str,
        image_size: int,
        preprocess_cfg: dict,
        identity: dict,
        vision_kind: str,
    ):
        open_clip = _open_clip()
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.pretrained = pretrained
        self.device = device
        self.precision = precision
        self.image_size = image_size
        self.identity = identity
        self._vision_kind = vision_kind
        self._preprocess_cfg = copy.deepcopy(preprocess_cfg)
        self._input_dtype = open_clip.get_input_dtype(precision) or torch.float32
        self.n_features = int(self._probe_n_features())
        grid_h, grid_w = self._grid_shape(image_size, image_size)
        self.n_patches = grid_h * grid_w
        cfg = open_clip.transform.PreprocessCfg(**{
            k: v for k, v in self._preprocess_cfg.items() if k in open_clip.transform.PreprocessCfg.__dataclass_fields__
        })
        self.preprocess = open_clip.transform.image_transform_v2(cfg, is_train=False)
        self.augment = self._build_augment(cfg.mean, cfg.std)

    def __repr__(self) -> str:
        return (f"Backbone({self.model_name!r}, pretrained={self.pretrained!r}, device={str(self.device)!r}, "
                f"precision={self.precision!r}, D={self.n_features}, L={self.n_patches}, "
                f"image_size={self.image_size})")

    embed_dim = deprecated_alias("n_features", "embed_dim")
    num_local_features = deprecated_alias("n_patches", "num_local_features")

    # ---- construction helpers ----
    def _probe_n_features(self) -> int:
        visual = self.model.visual
        if self._vision_kind == "resnet":
            return visual.attnpool.c_proj.out_features
        return visual.proj.shape[1]

    def _grid_shape(self, height: int, width: int) -> tuple[int, int]:
        """Local-feature grid (h, w) for an input of ``height x width`` pixels."""
        visual = self.model.visual
        if self._vision_kind == "resnet":
            return _resnet_grid_side(height), _resnet_grid_side(width)
        ph, pw = visual.patch_size
        return height // ph, width // pw

    def _build_augment(self, mean: Sequence[float], std: Sequence[float]):
        from torchvision import transforms as T

        return T.Compose([
            _to_rgb,
            T.RandomResizedCrop(self.image_size, scale=AUGMENT_SCALE, ratio=AUGMENT_RATIO,
                                interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(p=AUGMENT_FLIP_P),
            T.ToTensor(),
            T.Normalize(mean=tuple(mean), std=tuple(std)),
        ])

    def transform_identity(self, train: bool) -> str:
        """Stable JSON description of ``augment`` (train=True) or ``preprocess`` (False)."""
        cfg = self._preprocess_cfg
        if train:
            description = {
                "kind": "augment",
                "steps": ["rgb", "random_resized_crop", "horizontal_flip", "to_tensor", "normalize"],
                "size": self.image_size,
                "scale": list(AUGMENT_SCALE),
                "ratio": [round(r, 6) for r in AUGMENT_RATIO],
                "interpolation": "bicubic",
                "flip_p": AUGMENT_FLIP_P,
                "mean": [float(m) for m in cfg["mean"]],
                "std": [float(s) for s in cfg["std"]],
            }
        else:
            description = {"kind": "open_clip-eval", "open_clip_version": _open_clip().__version__,
                           **{k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}}
        return json.dumps(description, sort_keys=True)

    # ---- images ----
    def encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass: ``images [B, 3, H, W]`` (preprocessed) -> (global ``[B, D]``, local
        ``[B, L, D]``), raw (not normalised), float32, on ``self.device``, without grad.

        At the native size the global feature equals ``model.encode_image``; other sizes
        interpolate the positional embedding and give ``L = h * w`` of the new grid."""
        x = to_tensor(images, "images", ndim=4)
        if x.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"images must be floating point (preprocessed), got {x.dtype}")
        grid = self._grid_shape(x.shape[2], x.shape[3])
        if min(grid) < 1:
            raise ValueError(f"images of {x.shape[2]}x{x.shape[3]} px are too small for {self.model_name}")
        x = x.to(device=self.device, dtype=self._input_dtype)
        with torch.no_grad():
            if self._vision_kind == "resnet":
                image_features, patch_features = self._encode_resnet(x)
            else:
                image_features, patch_features = self._encode_vit(x)
        return image_features.float(), patch_features.float()

    def _encode_resnet(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        visual = self.model.visual
        pool = visual.attnpool
        x = visual.stem(x)
        x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))
        batch, channels, height, width = x.shape
        tokens = x.reshape(batch, channels, height * width).permute(2, 0, 1)  # [hw, B, C]
        tokens = torch.cat([tokens.mean(dim=0, keepdim=True), tokens], dim=0)  # mean token first
        side = math.isqrt(pool.positional_embedding.shape[0] - 1)
        pos = _interpolate_grid(pool.positional_embedding, (side, side), (height, width))
        tokens = tokens + pos[:, None, :].to(tokens.dtype)
        # global: the attention pool exactly as ModifiedResNet.attnpool computes it
        attended, _ = F.multi_head_attention_forward(
            query=tokens, key=tokens, value=tokens,
            embed_dim_to_check=tokens.shape[-1],
            num_heads=pool.num_heads,
            q_proj_weight=pool.q_proj.weight,
            k_proj_weight=pool.k_proj.weight,
            v_proj_weight=pool.v_proj.weight,
            in_proj_weight=None,
            in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
            bias_k=None,
            bias_v=None,
            add_zero_attn=False,
            dropout_p=0.0,
            out_proj_weight=pool.c_proj.weight,
            out_proj_bias=pool.c_proj.bias,
            use_separate_proj_weight=True,
            training=False,
            need_weights=False,
        )
        image_features = attended[0]
        # local: value path at every spatial position (no query-key mixing)
        values = F.linear(tokens[1:], pool.v_proj.weight, pool.v_proj.bias)
        patch_features = F.linear(values, pool.c_proj.weight, pool.c_proj.bias).permute(1, 0, 2)  # [B, hw, D]
        return image_features, patch_features

    def _encode_vit(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        visual = self.model.visual
        x = visual.conv1(x)  # [B, W, gh, gw]
        batch, width, grid_h, grid_w = x.shape
        x = x.reshape(batch, width, grid_h * grid_w).permute(0, 2, 1)
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(batch, -1, -1)
        x = torch.cat([cls, x], dim=1)
        pos = _interpolate_grid(visual.positional_embedding, tuple(visual.grid_size), (grid_h, grid_w))
        x = x + pos.to(x.dtype)
        x = visual.patch_dropout(x)  # identity in eval mode
        x = visual.ln_pre(x)
        if getattr(visual.transformer, "batch_first", True):
            x = visual.transformer(x)
        else:
            x = visual.transformer(x.transpose(0, 1)).transpose(0, 1)
        if visual.final_ln_after_pool:
            pooled = visual.ln_post(x[:, 0] if visual.pool_type == "tok" else x[:, 1:].mean(dim=1))
            tokens = visual.ln_post(x[:, 1:])
        else:
            x = visual.ln_post(x)
            pooled = x[:, 0] if visual.pool_type == "tok" else x[:, 1:].mean(dim=1)
            tokens = x[:, 1:]
        return pooled @ visual.proj, tokens @ visual.proj

    # ---- text ----
    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Raw text embeddings ``[n, D]`` (float32, not normalised) of ``texts``; prompts longer
        than the context length are truncated by the tokenizer."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a list of strings (wrap a single string in a list)")
        check_int(batch_size, "batch_size")
        texts = list(texts)
        if not texts:
            return torch.empty(0, self.n_features, device=self.device)
        out = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                tokens = self.tokenizer(texts[start:start + batch_size]).to(self.device)
                out.append(self.model.encode_text(tokens).float())
        return torch.cat(out)

    def text_classifier(
        self,
        classnames: Sequence[str],
        templates: Sequence[str],
        batch_size: int = 256,
        *,
        class_prompts: Sequence[Sequence[str]] | None = None,
    ) -> torch.Tensor:
        """Zero-shot classifier ``[C, D]``, unit rows (prompt ensembling of Radford et al., CLIP, ICML 2021): for each class, ``_`` -> space,
        fill every template's ``{}``, encode, L2-normalise each prompt, average, L2-normalise.

        ``class_prompts`` (optional, one list per class, e.g. CuPL sentences) are extra full
        prompts averaged together with that class's template prompts (APE's text weights)."""
        if isinstance(classnames, str) or not classnames:
            raise ValueError("classnames must be a non-empty list of strings")
        templates = check_templates(templates, "templates argument", allow_empty=class_prompts is not None)
        if class_prompts is not None and len(class_prompts) != len(classnames):
            raise ValueError(f"class_prompts has {len(class_prompts)} lists but there are {len(classnames)} classes")
        prompts: list[str] = []
        owner: list[int] = []
        for index, classname in enumerate(classnames):
            label = clean_classname(str(classname))
            extra = [] if class_prompts is None else list(class_prompts[index])
            class_texts = [t.replace("{}", label) for t in templates] + extra
            if not class_texts:
                raise ValueError(f"class {classname!r} has no prompt: give templates or class_prompts")
            prompts += class_texts
            owner += [index] * len(class_texts)
        embeddings = l2_normalize(self.encode_text(prompts, batch_size=batch_size))
        owner_t = torch.tensor(owner, device=embeddings.device)
        sums = embeddings.new_zeros(len(classnames), embeddings.shape[1])
        sums.index_add_(0, owner_t, embeddings)
        counts = torch.bincount(owner_t, minlength=len(classnames)).clamp_min(1).unsqueeze(1)
        return l2_normalize(sums / counts)
