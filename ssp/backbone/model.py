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
import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

import ssp.backbone.weights as _weights
from ssp._checks import PRECISIONS, check_int, option
from ssp._io import file_sha256
from ssp._utils.arrays import to_tensor
from ssp._utils.devices import resolve_device
from ssp._utils.normalize import l2_normalize
from ssp._utils.warn import warn
from ssp.data.base import check_templates, clean_classname

"""Seed of the random initialisation used when no pretrained weights are given."""


# Version strings of the local-feature definitions; they enter the identity (cache keys).
LOCAL_FEATURE_METHODS = {
    "resnet": "attnpool-value-path(c_proj(v_proj(x+pos)))/v1",
    "vit": "patch-tokens(ln_post)@proj/v1",
}


AUGMENT_SCALE = (0.5, 1.0)


AUGMENT_RATIO = (3.0 / 4.0, 4.0 / 3.0)


AUGMENT_FLIP_P = 0.5


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
    _weights._check_supported_config("model config", model_cfg)
    vision_cfg = model_cfg["vision_cfg"]
    size = image_size if image_size is not None else vision_cfg.get("image_size", 224)
    return _grid_of(_square(size, "model config"), vision_cfg) ** 2


def _uses_quick_gelu(model: torch.nn.Module) -> bool:
    quick_gelu_cls = _weights._open_clip().transformer.QuickGELU
    return any(isinstance(m, quick_gelu_cls) for m in model.modules())


def _vision_kind(visual: torch.nn.Module, oc_name: str) -> str:
    open_clip = _weights._open_clip()
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
        pretrained: None / ``"none"`` -> random init with seed ``_weights.RANDOM_INIT_SEED`` (loud
            warning: accuracies are meaningless); an open_clip tag (``"openai"``,
            ``"laion2b_s34b_b79k"``, ...); or a local checkpoint (.pt/.pth/.bin/.safetensors,
            OpenAI TorchScript archives included). For ``hf-hub:`` names None means the hub's
            weights.
        device: resolved with ``ssp._utils.devices.resolve_device`` (None/"auto" -> CUDA if available).
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"`` (open_clip's OpenAI-style mixed precision:
            low-precision conv/linear weights, float32 LayerNorm); outputs are always float32.
        quick_gelu: force QuickGELU on/off; None decides from the weights (``resolve_quick_gelu``).
        cache_dir: download cache for pretrained weights.
    """
    open_clip = _weights._open_clip()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device = resolve_device(device)
    oc_name, schema, cfg = _weights._resolve_architecture(name)
    _weights._check_supported_config(oc_name, cfg)
    kind, info = _weights._classify_weights(oc_name, schema, pretrained)

    decision, qg_warning = _weights._decide_quick_gelu(oc_name, cfg, kind, info, pretrained, quick_gelu)
    if qg_warning:
        warn(qg_warning)  # one channel (the warnings module): printed once, filterable, recordable

    checkpoint: Path | None = None
    preprocess_override: dict = {}
    if kind == "tag":
        checkpoint = _weights._download_tag(oc_name, pretrained, info, cache_dir)
        preprocess_keys = set(open_clip.transform.PreprocessCfg.__dataclass_fields__) - {"size"}
        preprocess_override = {k: info[k] for k in preprocess_keys if k in info}
    elif kind == "file":
        checkpoint = info
    elif kind == "random":
        real = option("pretrained='openai'", "--pretrained openai")
        message = (
            f"backbone {oc_name!r} is RANDOMLY INITIALISED (seed {_weights.RANDOM_INIT_SEED}): no pretrained "
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

    hub_offline = _weights._hub_unreachable() if kind == "hf-hub" else None
    with torch.random.fork_rng(devices=[]), _weights._quiet_random_init_log(checkpoint is not None), \
            _weights._hub_offline_mode(hub_offline is not None):
        torch.manual_seed(_weights.RANDOM_INIT_SEED)
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
        weights = {"source": "random", "seed": _weights.RANDOM_INIT_SEED}
    elif kind == "hf-hub":
        with _weights._hub_offline_mode(hub_offline is not None):  # the file is cached by now
            sha256 = _weights._hub_sha256(oc_name, cache_dir)
        weights = {"source": "hf-hub", "id": oc_name[len(_weights.HF_HUB_PREFIX):], "sha256": sha256}
    else:
        fmt = _weights._load_weights(model, checkpoint, oc_name)
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
    _weights.logger.info("loaded backbone %s (weights %s) on %s, %s", oc_name, weights, device, precision)
    return backbone


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


class Backbone:
    """An open_clip model with the feature extraction ssp needs. Build with :func:`load_backbone`.

    Attributes:
        model: the open_clip model (eval mode, no grad).
        tokenizer: its open_clip tokenizer.
        model_name, pretrained, device, precision: as loaded.
        n_features: D, the joint embedding width.
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
        open_clip = _weights._open_clip()
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
            description = {"kind": "open_clip-eval", "open_clip_version": _weights._open_clip().__version__,
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
