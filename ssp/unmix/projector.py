"""The Unmix-CLIP projectors (Rawlekar et al., "Disentangling CLIP Features for Enhanced
Localized Understanding", arXiv 2502.02977): ``h_text`` (MLP) and ``h_img`` (linear) trained on
frozen CLIP features so that projected class text features are nearly orthogonal (MFI loss)
while image features stay aligned with them.

Alignment: single-label cross-entropy (classification data) or, for multi-label data, the
dual-prompt spatial aggregation with the Asymmetric Loss.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from torch import nn

from ssp._io import atomic_path
from ssp._utils.arrays import (
    ArrayLike,
    check_features,
    check_label_dtype,
    check_labels,
    check_text_features,
    like_input,
    to_tensor,
)
from ssp._utils.devices import resolve_device
from ssp._utils.fitted import check_is_fitted
from ssp._utils.normalize import l2_normalize
from ssp._utils.params import Boolean, Integer, Options, Real, ValidatedFit
from ssp.unmix.losses import MFI_FORMS, asymmetric_loss, mfi_loss
from ssp.unmix.metrics import mean_average_precision

__all__ = ["UnmixProjector", "dual_prompt_logits", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_TASKS = ("single_label", "multi_label")
_OPTIMIZERS = ("sgd", "adamw")


def _build_text_head(dim: int, hidden: int, out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, out, bias=False))


def _build_image_head(dim: int, out: int) -> nn.Module:
    return nn.Linear(dim, out, bias=False)


def dual_prompt_logits(patches: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, *,
                       patch_scale: float = 20.0, pair_scale: float = 5.0) -> torch.Tensor:
    """Multi-label class logits from dense features and dual prompts.

    ``patches [B, L, D']`` and ``positive`` / ``negative [C, D']`` L2-normalised. For every
    patch p and prompt: ``O_p = patch_scale * cos``; spatial weights ``w = softmax_p(O^+)``
    (shared by both prompts); class logit pair ``pair_scale * sum_p w_p O_p``. Returns
    ``[B, C]``: positive minus negative logit, i.e. the logit of the positive slot of the
    two-way softmax (``sigmoid`` of it is the class probability).
    """
    o_pos = patch_scale * patches @ positive.T     # [B, L, C]
    o_neg = patch_scale * patches @ negative.T
    w = torch.softmax(o_pos, dim=1)
    return pair_scale * (w * (o_pos - o_neg)).sum(dim=1)


class UnmixProjector(ValidatedFit, ClassifierMixin, BaseEstimator):
    """Learned projectors ``h_text`` / ``h_img`` on frozen CLIP features (a scikit-learn
    estimator: ``get_params`` / ``set_params`` / ``clone`` from ``BaseEstimator``; ``predict`` and
    ``score`` for single-label projectors).

    Parameters (keyword-only; stored as given, validated in :meth:`fit`):
        embed_dim: D', the projected width (256).
        hidden_dim: width of ``h_text``'s hidden layer (384).
        mfi_weight: alpha_MFI, weight of the MFI loss. ``None``: 1.0 with cross-entropy,
            7e-5 with the Asymmetric Loss (summed, so on a much larger scale).
        mfi_form: ``"class"`` (squared off-diagonal class cosines) or ``"barlow"``.
        mfi_lambda: lambda inside the MFI loss (0.2).
        logit_scale: tau of the single-label logits ``tau * cos`` (50).
        patch_scale, pair_scale: the multi-label scales: patch-prompt logits
            ``O = patch_scale * cos`` (20) and class logits ``pair_scale * sum_p w_p O_p`` (5).
        gamma_neg, gamma_pos, asl_margin: Asymmetric Loss parameters (4, 1, 0.05).
        epochs, batch_size, lr, momentum, weight_decay, optimizer: training (50, 32, 0.002,
            0.9, 1e-4, ``"sgd"``; cosine learning-rate schedule over all steps).
        seed: seeds initialisation and shuffling (same seed -> identical result on CPU).
        device: ``None``/``"auto"``, ``"cpu"``, ``"cuda"``, ...
        progress: tqdm bar over epochs.

    Fitted attributes: ``h_text_``, ``h_img_`` (torch modules, eval mode), ``task_``,
    ``n_classes_``, ``n_features_in_``, ``text_features_`` ``[C, D]`` (normalised input),
    ``negative_text_features_`` (multi-label), ``classes_`` (``0..C-1``), ``history_``
    (per-epoch loss and ``val_score_pct``: validation accuracy or mAP, in percent),
    ``best_epoch_``, ``device_``.
    """

    _parameter_constraints = {
        **{name: [Integer(1)] for name in ("embed_dim", "hidden_dim", "epochs", "batch_size")},
        **{name: [Real(0)] for name in ("mfi_lambda", "logit_scale", "patch_scale", "pair_scale", "gamma_neg",
                                        "gamma_pos", "asl_margin", "momentum", "weight_decay")},
        "lr": [Real(0, closed="neither")],
        "mfi_weight": [Real(0), None],
        "mfi_form": [Options(MFI_FORMS)],
        "optimizer": [Options(_OPTIMIZERS)],
        "seed": [Integer(None)],
        "progress": [Boolean()],
    }

    def __init__(self, *, embed_dim: int = 256, hidden_dim: int = 384, mfi_weight: float | None = None,
                 mfi_form: str = "class", mfi_lambda: float = 0.2, logit_scale: float = 50.0,
                 patch_scale: float = 20.0, pair_scale: float = 5.0, gamma_neg: float = 4.0,
                 gamma_pos: float = 1.0, asl_margin: float = 0.05, epochs: int = 50,
                 batch_size: int = 32, lr: float = 0.002, momentum: float = 0.9,
                 weight_decay: float = 1e-4, optimizer: str = "sgd", seed: int = 0,
                 device: str | torch.device | None = None, progress: bool = True):
        self.embed_dim = embed_dim
        self.hidden_dim = hidden_dim
        self.mfi_weight = mfi_weight
        self.mfi_form = mfi_form
        self.mfi_lambda = mfi_lambda
        self.logit_scale = logit_scale
        self.patch_scale = patch_scale
        self.pair_scale = pair_scale
        self.gamma_neg = gamma_neg
        self.gamma_pos = gamma_pos
        self.asl_margin = asl_margin
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.optimizer = optimizer
        self.seed = seed
        self.device = device
        self.progress = progress

    def _effective_mfi_weight(self, task: str) -> float:
        if self.mfi_weight is not None:
            return float(self.mfi_weight)
        return 1.0 if task == "single_label" else 7e-5

    # ---- training ----
    def fit(self, image_features: ArrayLike, labels: ArrayLike, *, text_features: ArrayLike,
            negative_text_features: ArrayLike | None = None, patch_features: ArrayLike | None = None,
            validation: tuple | None = None) -> "UnmixProjector":
        """Train ``h_text`` and ``h_img``.

        Args:
            image_features: ``[N, D]`` global image features (normalised here).
            labels: ``[N]`` class indices (single-label: cross-entropy) or ``[N, C]`` 0/1
                (multi-label: dual prompts + Asymmetric Loss; entries < 0 are ignored).
            text_features: ``[C, D]`` class text features (multi-label: the positive prompts,
                e.g. "A photo of a {}.").
            negative_text_features: ``[C, D]`` negative prompts ("A photo without a {}."),
                required for multi-label labels.
            patch_features: ``[N, L, D]`` dense features for the spatial aggregation
                (multi-label); without them the global feature is the single "patch".
            validation: optional ``(features, labels)`` (multi-label: optionally a third item,
                the patch features) scored after every epoch; the epoch with the best
                validation score (accuracy / mAP) is kept. Never pass test data here.
        Returns:
            self
        """
        return self._validated_fit(lambda: self._fit(
            image_features, labels, text_features=text_features, negative_text_features=negative_text_features,
            patch_features=patch_features, validation=validation))

    def _fit(self, image_features: ArrayLike, labels: ArrayLike, *, text_features: ArrayLike,
             negative_text_features: ArrayLike | None = None, patch_features: ArrayLike | None = None,
             validation: tuple | None = None) -> None:
        """:meth:`fit`'s work, run by the shared fit template after the parameters are validated."""
        device = resolve_device(self.device)
        x = l2_normalize(check_features(image_features, "image_features", device=device, dtype=torch.float32))
        text = l2_normalize(check_text_features(text_features, device=device, dtype=torch.float32))
        n_classes, dim = text.shape
        if x.shape[1] != dim:
            raise ValueError(f"image_features have D = {x.shape[1]} but text_features have D = {dim}; "
                             "both must come from the same CLIP model")
        if labels is None:
            raise ValueError("UnmixProjector requires y to be passed, but the target y is None (labels [N] "
                             "or [N, C] are required)")
        check_label_dtype(labels)
        y_raw = to_tensor(labels, "labels", device=device)
        negative = patches = None
        if y_raw.ndim == 1:
            task = "single_label"
            y = check_labels(y_raw, x.shape[0], n_classes, device=device)
            if negative_text_features is not None or patch_features is not None:
                raise ValueError("negative_text_features and patch_features are for multi-label labels [N, C]; "
                                 "single-label labels [N] train with cross-entropy on the global features")
        elif y_raw.ndim == 2:
            task = "multi_label"
            y = self._check_multilabel(y_raw, x.shape[0], n_classes)
            if negative_text_features is None:
                raise ValueError("multi-label training uses dual prompts: pass negative_text_features [C, D] "
                                 "(e.g. the text features of 'A photo without a {}.')")
            negative = l2_normalize(check_text_features(negative_text_features, name="negative_text_features",
                                                        device=device, dtype=torch.float32))
            if tuple(negative.shape) != tuple(text.shape):
                raise ValueError(f"negative_text_features has shape {tuple(negative.shape)}, expected "
                                 f"{tuple(text.shape)} like text_features")
            if patch_features is not None:
                patches = self._check_patches(patch_features, x.shape[0], dim, device)
        else:
            raise ValueError(f"labels must be [N] class indices or [N, C] 0/1, got shape {tuple(y_raw.shape)}")

        val = self._prepare_validation(validation, task, n_classes, dim, device)
        generator = torch.Generator().manual_seed(int(self.seed))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.seed))
            h_text = _build_text_head(dim, int(self.hidden_dim), int(self.embed_dim)).to(device)
            h_img = _build_image_head(dim, int(self.embed_dim)).to(device)
        params = list(h_text.parameters()) + list(h_img.parameters())
        if self.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        n = x.shape[0]
        steps_per_epoch = math.ceil(n / int(self.batch_size))
        total_steps = steps_per_epoch * int(self.epochs)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)))
        mfi_w = self._effective_mfi_weight(task)

        from tqdm.auto import tqdm

        self.task_ = task
        self.classes_ = np.arange(n_classes)
        self.n_classes_ = int(n_classes)
        self.n_features_in_ = int(dim)
        self.device_ = device
        self.text_features_ = text
        self.negative_text_features_ = negative
        history: list[dict[str, float]] = []
        best = (-math.inf, 0, None)
        bar = tqdm(range(int(self.epochs)), desc="unmix projector", unit="epoch",
                   disable=None if self.progress else True)
        for epoch in bar:
            h_text.train()
            h_img.train()
            order = torch.randperm(n, generator=generator).to(device)
            sums = {"loss": 0.0, "align": 0.0, "mfi": 0.0}
            for start in range(0, n, int(self.batch_size)):
                idx = order[start:start + int(self.batch_size)]
                if task == "single_label":
                    t = l2_normalize(h_text(text))
                    xi = l2_normalize(h_img(x[idx]))
                    align = nn.functional.cross_entropy(self.logit_scale * xi @ t.T, y[idx])
                else:
                    both = h_text(torch.cat([text, negative]))
                    t, t_neg = l2_normalize(both[:n_classes]), l2_normalize(both[n_classes:])
                    p = patches[idx] if patches is not None else x[idx, None, :]
                    logits = self._multilabel_logits(l2_normalize(h_img(p)), t, t_neg)
                    target = y[idx]
                    align = asymmetric_loss(logits, target.clamp_min(0), gamma_neg=self.gamma_neg,
                                            gamma_pos=self.gamma_pos, margin=self.asl_margin,
                                            ignore=target < 0)
                reg = mfi_loss(t, form=self.mfi_form, off_diagonal_weight=self.mfi_lambda)
                loss = align + mfi_w * reg
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                sums["loss"] += float(loss.detach()) * len(idx)
                sums["align"] += float(align.detach()) * len(idx)
                sums["mfi"] += float(reg.detach()) * len(idx)
            record = {k: v / n for k, v in sums.items()}
            record["epoch"] = epoch + 1
            if val is not None:
                self.h_text_, self.h_img_ = h_text.eval(), h_img.eval()
                record["val_score_pct"] = self._validation_score(val)
                if record["val_score_pct"] > best[0]:
                    best = (record["val_score_pct"], epoch + 1,
                            ({k: v.clone() for k, v in h_text.state_dict().items()},
                             {k: v.clone() for k, v in h_img.state_dict().items()}))
            history.append(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}")
        bar.close()
        if best[2] is not None:
            h_text.load_state_dict(best[2][0])
            h_img.load_state_dict(best[2][1])
            self.best_epoch_ = best[1]
        else:
            self.best_epoch_ = int(self.epochs)
        self.h_text_ = h_text.eval().requires_grad_(False)
        self.h_img_ = h_img.eval().requires_grad_(False)
        self.history_ = history
        return self

    @staticmethod
    def _check_multilabel(y: torch.Tensor, n: int, n_classes: int) -> torch.Tensor:
        if tuple(y.shape) != (n, n_classes):
            raise ValueError(f"multi-label labels have shape {tuple(y.shape)}, expected [N, C] = [{n}, {n_classes}]")
        y = y.float()
        ok = (y == 0) | (y == 1) | (y < 0)
        if not bool(ok.all()):
            raise ValueError("multi-label labels must be 0/1 (negative values mark ignored entries)")
        return torch.where(y < 0, torch.full_like(y, -1.0), y)

    @staticmethod
    def _check_patches(patch_features: ArrayLike, n: int, dim: int, device: torch.device) -> torch.Tensor:
        p = to_tensor(patch_features, "patch_features", ndim=3, device=device, dtype=torch.float32)
        if p.shape[0] != n or p.shape[2] != dim:
            raise ValueError(f"patch_features has shape {tuple(p.shape)}, expected [N, L, D] = [{n}, L, {dim}]")
        return p

    def _multilabel_logits(self, img: torch.Tensor, t: torch.Tensor, t_neg: torch.Tensor) -> torch.Tensor:
        return dual_prompt_logits(img, t, t_neg, patch_scale=self.patch_scale, pair_scale=self.pair_scale)

    def _prepare_validation(self, validation, task, n_classes, dim, device):
        if validation is None:
            return None
        if not isinstance(validation, (tuple, list)) or len(validation) not in (2, 3):
            raise ValueError("validation must be (features, labels) or, multi-label, (features, labels, patches)")
        xv = to_tensor(validation[0], "validation features", ndim=2, device=device, dtype=torch.float32)
        if xv.shape[1] != dim:
            raise ValueError(f"validation features have D = {xv.shape[1]}, expected {dim}")
        if task == "single_label":
            yv = check_labels(validation[1], xv.shape[0], n_classes, name="validation labels", device=device)
            return (xv, yv, None)
        yv = self._check_multilabel(to_tensor(validation[1], "validation labels", device=device), xv.shape[0], n_classes)
        pv = self._check_patches(validation[2], xv.shape[0], dim, device) if len(validation) == 3 and validation[2] is not None else None
        return (xv, yv, pv)

    def _validation_score(self, val) -> float:
        xv, yv, pv = val
        scores = self._scores(xv, pv)
        if self.task_ == "single_label":
            return float((scores.argmax(1) == yv).float().mean()) * 100

        return float(mean_average_precision(scores.cpu().numpy(), yv.cpu().numpy())[0])

    # ---- transforms ----
    def transform_text(self, text_features: ArrayLike) -> ArrayLike:
        """``[C, D]`` text features -> ``[C, D']`` projected, L2-normalised (same kind as input)."""
        check_is_fitted(self, "h_text_")
        t = check_text_features(text_features, device=self.device_, dtype=torch.float32)
        if t.shape[1] != self.n_features_in_:
            raise ValueError(f"text_features must be [C, {self.n_features_in_}], got shape {tuple(t.shape)}")
        with torch.no_grad():
            out = l2_normalize(self.h_text_(l2_normalize(t)))
        return like_input(out, text_features)

    def transform_image(self, image_features: ArrayLike) -> ArrayLike:
        """``[..., D]`` image features (global ``[N, D]`` or dense ``[N, L, D]``) -> ``[..., D']``
        projected, L2-normalised (same kind as input)."""
        check_is_fitted(self, "h_img_")
        x = to_tensor(image_features, "image_features", device=self.device_, dtype=torch.float32)
        if x.ndim < 1 or x.shape[-1] != self.n_features_in_:
            raise ValueError(f"image_features must end in D = {self.n_features_in_}, got shape {tuple(x.shape)}")
        with torch.no_grad():
            out = l2_normalize(self.h_img_(l2_normalize(x)))
        return like_input(out, image_features)

    def _scores(self, x: torch.Tensor, patches: torch.Tensor | None, chunk: int = 256) -> torch.Tensor:
        out = []
        with torch.no_grad():
            if self.task_ == "single_label":
                t = l2_normalize(self.h_text_(self.text_features_))
                for s in range(0, x.shape[0], chunk):
                    out.append(self.logit_scale * l2_normalize(self.h_img_(l2_normalize(x[s:s + chunk]))) @ t.T)
            else:
                both = l2_normalize(self.h_text_(torch.cat([self.text_features_, self.negative_text_features_])))
                t, t_neg = both[:self.n_classes_], both[self.n_classes_:]
                for s in range(0, x.shape[0], chunk):
                    p = patches[s:s + chunk] if patches is not None else x[s:s + chunk, None, :]
                    out.append(self._multilabel_logits(l2_normalize(self.h_img_(l2_normalize(p))), t, t_neg))
        return torch.cat(out) if out else torch.empty(0, self.n_classes_, device=x.device)

    def decision_function(self, image_features: ArrayLike, *, patch_features: ArrayLike | None = None) -> ArrayLike:
        """Class scores ``[N, C]`` against the fitted classes: single-label ``tau * cos``;
        multi-label the positive-minus-negative logit (sigmoid -> probability)."""
        check_is_fitted(self, "h_img_")
        x = to_tensor(image_features, "image_features", ndim=2, device=self.device_, dtype=torch.float32)
        if x.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {x.shape[1]} features, but UnmixProjector is expecting {self.n_features_in_} "
                             "features as input (image_features must be [N, D] with the D of fit)")
        p = None
        if patch_features is not None:
            if self.task_ != "multi_label":
                raise ValueError("patch_features are used by multi-label projectors only")
            p = self._check_patches(patch_features, x.shape[0], self.n_features_in_, self.device_)
        return like_input(self._scores(x, p), image_features)

    def predict(self, image_features: ArrayLike) -> ArrayLike:
        """Single-label: the arg-max class ``[N]``."""
        scores = to_tensor(self.decision_function(image_features), "scores")
        if self.task_ != "single_label":
            raise ValueError("predict() is for single-label projectors; use decision_function() for multi-label scores")
        return like_input(scores.argmax(1), image_features)

    def score(self, X: ArrayLike, y: ArrayLike, sample_weight=None) -> float:
        """Single-label top-1 accuracy on ``X`` ``[N, D]`` with labels ``y`` ``[N]`` in ``0..C-1``,
        as a fraction in [0, 1] (scikit-learn's convention); a label outside the classes raises."""
        from sklearn.metrics import accuracy_score

        pred = self.predict(X)
        pred = pred.cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
        truth = check_labels(y, pred.shape[0], self.n_classes_, name="y",
                             classes_from="the fitted text classifier").cpu().numpy()
        return float(accuracy_score(truth, pred, sample_weight=sample_weight))

    # ---- persistence ----
    def config(self) -> dict[str, Any]:
        """JSON-able description: parameters, format and fitted shapes."""
        params = self.get_params()
        params["device"] = None if params["device"] is None else str(params["device"])
        out = {"format": "ssp-unmix-projector", "format_version": FORMAT_VERSION, "params": params}
        if hasattr(self, "h_img_"):
            out.update(task=self.task_, n_classes=self.n_classes_, n_features_in=self.n_features_in_,
                       best_epoch=self.best_epoch_, history=self.history_)
        return out

    def save(self, path: str | os.PathLike) -> tuple[Path, Path]:
        """Write ``<path>.safetensors`` (weights, BatchNorm statistics and the fitted text
        features) and ``<path>.json`` (the config), each atomically. Returns both paths."""
        from safetensors.torch import save_file

        check_is_fitted(self, "h_img_")
        path = Path(path)
        if path.suffix in (".safetensors", ".json"):
            path = path.with_suffix("")
        tensors = {f"h_text.{k}": v.detach().cpu().contiguous() for k, v in self.h_text_.state_dict().items()}
        tensors.update({f"h_img.{k}": v.detach().cpu().contiguous() for k, v in self.h_img_.state_dict().items()})
        tensors["text_features"] = self.text_features_.detach().cpu().contiguous()
        if self.negative_text_features_ is not None:
            tensors["negative_text_features"] = self.negative_text_features_.detach().cpu().contiguous()
        weights, config = path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")
        weights.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(weights) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "ssp-unmix-projector",
                                                   "format_version": str(FORMAT_VERSION)})
        with atomic_path(config) as tmp:
            tmp.write_text(json.dumps(self.config(), indent=2) + "\n", encoding="utf-8")
        return weights, config

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | torch.device | None = None) -> "UnmixProjector":
        """Read a projector written by :meth:`save` (``path`` with or without the suffix)."""
        from safetensors.torch import load_file

        path = Path(path)
        if path.suffix in (".safetensors", ".json"):
            path = path.with_suffix("")
        weights, config = path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")
        for f in (weights, config):
            if not f.is_file():
                raise FileNotFoundError(f"projector file {f} not found; write it with UnmixProjector.save() "
                                        "or `ssp-unmix train`")
        try:
            cfg = json.loads(config.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{config} is not valid JSON: {err}") from None
        if cfg.get("format") != "ssp-unmix-projector" or cfg.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{config} is not an ssp Unmix projector config of format version {FORMAT_VERSION}")
        try:
            tensors = load_file(str(weights))
        except Exception as err:
            raise ValueError(f"could not read {weights}: {type(err).__name__}: {err}") from None
        params = dict(cfg["params"])
        if device is not None:
            params["device"] = device
        est = cls(**params)
        dev = resolve_device(est.device)
        dim, n_classes = int(cfg["n_features_in"]), int(cfg["n_classes"])
        h_text = _build_text_head(dim, int(est.hidden_dim), int(est.embed_dim))
        h_img = _build_image_head(dim, int(est.embed_dim))
        h_text.load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("h_text.")})
        h_img.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("h_img.")})
        est.h_text_ = h_text.to(dev).eval().requires_grad_(False)
        est.h_img_ = h_img.to(dev).eval().requires_grad_(False)
        est.task_ = cfg["task"]
        est.classes_ = np.arange(n_classes)
        est.n_classes_ = n_classes
        est.n_features_in_ = dim
        est.device_ = dev
        est.text_features_ = tensors["text_features"].to(dev)
        neg = tensors.get("negative_text_features")
        est.negative_text_features_ = neg.to(dev) if neg is not None else None
        est.history_ = cfg.get("history", [])
        est.best_epoch_ = cfg.get("best_epoch")
        return est
