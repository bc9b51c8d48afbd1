"""Fine-tuned cache models: Tip-Adapter-F and APE-T, trained on pre-extracted CLIP features.

Both extend their training-free counterparts of :mod:`ssp.methods.cache_models` with a few learnable
tensors, trained by cross-entropy on the support set and selected on validation data::

    clf = TipAdapterF(alpha=3.0, beta=1.0, epochs=20).fit(
        keys, labels, text_features=text, view_features=views,        # views: [E, N, D]
        val_features=val_x, val_labels=val_y)                          # epoch selection only
    validation_search(clf, val_x, val_y, grid)                         # then alpha, beta (gamma)
    clf.predict(test_x)                                                # test data: touched once

* **Tip-Adapter-F** (Zhang et al., Tip-Adapter, ECCV 2022, Sec. 3.3): the cache keys become a
  learnable ``[N, D]`` matrix ``Θ`` initialised to the keys ``F``; logits
  ``s · x Wᵀ + α · exp(−β (1 − x Θᵀ)) Y``, with ``Θ`` never re-normalised.
* **APE-T** (Zhu et al., APE, ICCV 2023, Sec. 3.3): a category residual ``R`` ``[C, Q]`` on the
  ``Q`` selected channels ``Ω`` (added to every key of its class and to its text embedding) and
  per-key value weights ``v`` ``[N]``; logits
  ``s · x W'ᵀ + α · exp(−β (1 − x_Ω F'_Ωᵀ)) (Y ⊙ v ⊙ exp(γ δ))`` with ``F'_Ω = norm(F_Ω) + R[y]``
  and ``W'[:, Ω] = W[:, Ω] + R`` (no re-normalisation after the residual). At initialisation
  (``R = 0``, ``v = 1``) this is exactly :class:`ssp.methods.cache_models.APE`; ``δ`` is APE's divergence
  of the untrained keys. The channels are computed for ``Q = n_channels`` (the published code
  computes them for the training-free channel count and then mismatches the residual's width).

**Training inputs.** ``view_features`` ``[E, N, D]`` are the support images' augmented views
(the cache keys are their normalised mean); epoch ``e`` (0-based) trains on view ``e mod E`` of
every image, in a seeded random order. This replaces the published scripts' fresh augmentation
and re-encoding per epoch by a pass over the stored features (the feature store's views). Without ``view_features`` the keys
themselves are the training inputs (``training_inputs_ == "keys"``). Each view's projections
and frozen zero-shot logits are computed once and kept for the run (about ``E·N·(C + 2D)``
floats: 1.6 GB at ImageNet size with 10 views).

**Optimisation.** AdamW (``lr``, ``eps``, ``weight_decay``), cosine annealing over all
``epochs x ceil(N / batch_size)`` steps, cross-entropy, with ``α``, ``β`` (and ``γ``) fixed at
the constructor's values. After each epoch the validation accuracy is measured; the parameters
of the first epoch with the best validation accuracy are kept. Without validation data the last
epoch is kept (``selection_ == "last"``). Test data is never an input of ``fit``.

**Determinism.** Shuffling uses a ``torch.Generator`` seeded with ``seed`` (the global RNG is
neither read nor changed), so two fits with the same seed on the same CPU and thread count give
bit-identical parameters and logits. ``device`` picks CPU or GPU; the code is the same.

After ``fit`` the model is an ordinary :class:`~ssp.methods.cache_models.TipAdapter` /
:class:`~ssp.methods.cache_models.APE` with trained state: ``decision_function``, ``predict``, ``score``
and :func:`ssp.methods.search.validation_search` (``alpha``, ``beta``, and ``gamma`` for APE-T) work as
for the training-free models, including routings with ``projector=SSPProjector(...)`` (the
training inputs are projected with the same routing as the queries; APE-T's residual is trained
under the routing given at fit time).
"""
from __future__ import annotations

import math
import time
from typing import Any, Mapping, Sequence

from ssp._lazy import no_grad, torch
from ssp._utils.arrays import ArrayLike, to_tensor
from ssp._utils.normalize import l2_normalize
from ssp.methods.cache_models import APE, TipAdapter, cache_kernel, check_n_channels
from ssp.methods.base import CLIPFeatureClassifier
from ssp._utils.params import Boolean, Integer, Real
from ssp.methods.registry import register_method

__all__ = ["TipAdapterF", "APET"]

_TRAIN_PARAMS = ("epochs", "lr", "eps", "weight_decay", "batch_size", "seed")

# the constraints of the training parameters (TipAdapterF and APET add them to their base's)
_TRAIN_CONSTRAINTS = {"epochs": [Integer(0)], "lr": [Real(0)], "eps": [Real(0, closed="neither")],
                      "weight_decay": [Real(0)], "batch_size": [Integer(1)], "seed": [Integer(0)],
                      "progress": [Boolean()]}


def _adamw(params: list[torch.Tensor], settings: dict[str, Any]) -> torch.optim.AdamW:
    """AdamW, fused where the device supports it (6x faster steps on CPU, same update rule)."""
    kwargs = dict(lr=settings["lr"], eps=settings["eps"], weight_decay=settings["weight_decay"])
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, **kwargs)


class _FineTuned:
    """Training loop shared by Tip-Adapter-F and APE-T (mixed into the training-free classes)."""

    # ---- fitting ------------------------------------------------------------------------

    def fit(self, image_features: ArrayLike, labels: ArrayLike, *, text_features: ArrayLike,
            val_features: ArrayLike | None = None, val_labels: ArrayLike | None = None,
            view_features: ArrayLike | None = None, patch_features: ArrayLike | None = None):
        """Build the cache as the training-free model does, then train.

        Args:
            image_features: ``[N, D]`` support features (the cache keys), any order.
            labels: ``[N]`` support labels.
            text_features: ``[C, D]`` text classifier.
            val_features, val_labels: ``[M, D]`` / ``[M]`` validation pair, used only to select
                the epoch (never pass test data).
            view_features: ``[E, N, D]`` augmented views of the support images, in the order of
                ``image_features``; the training inputs. ``None``: train on the keys.
            patch_features: ``[N, L, D]`` to fit ``projector`` (as in the training-free model).

        A failed fit leaves the model unfitted, never half-fitted.
        """
        return CLIPFeatureClassifier.fit(self, image_features, labels, text_features=text_features,
                                         patch_features=patch_features, view_features=view_features,
                                         val_features=val_features, val_labels=val_labels)

    def _fit(self, image_features, labels, text_features, patch_features=None, view_features=None,
             val_features=None, val_labels=None) -> None:
        super()._fit(image_features, labels, text_features, patch_features)
        inputs = self._training_inputs(view_features)
        val = self._validation_pair(val_features, val_labels)
        settings = {name: float(getattr(self, name)) for name in ("lr", "eps", "weight_decay")}
        settings.update({name: int(getattr(self, name)) for name in ("epochs", "batch_size", "seed")})
        self._train(inputs, val, settings)

    def _training_inputs(self, view_features: ArrayLike | None) -> torch.Tensor:
        """``[E, N, D]`` normalised training inputs in the grouped (sorted) support order."""
        if view_features is None:
            self.training_inputs_ = "keys"
            self.n_views_ = 0
            return self._torch.support_features_[None]
        views = to_tensor(view_features, "view_features", ndim=3, device=self.device_)
        n_keys, dim = self._torch.support_features_.shape
        if views.shape[0] < 1 or views.shape[1:] != (n_keys, dim):
            raise ValueError(
                f"view_features must be [E, N, D] = [E, {n_keys}, {dim}] (E >= 1 augmented views "
                f"of the support images, in the order of image_features), got {tuple(views.shape)}"
            )
        self.training_inputs_ = "views"
        self.n_views_ = int(views.shape[0])
        return l2_normalize(views.to(self.dtype_))[:, self._torch.support_order_]

    def _train(self, inputs: torch.Tensor, val, settings: dict[str, Any]) -> None:
        epochs, batch_size = settings["epochs"], settings["batch_size"]
        n_keys = self._torch.support_features_.shape[0]
        params = {k: torch.nn.Parameter(v.detach().clone()) for k, v in self._initial_params().items()}
        optimizer = _adamw(list(params.values()), settings)
        steps = math.ceil(n_keys / batch_size)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(epochs * steps, 1))
        val_prepared = self._prepare(val[0]) if val is not None else None

        history: list[dict[str, Any]] = []
        bar = self._progress_bar(epochs * steps)
        try:
            start = time.perf_counter()
            best_epoch, best_state = self._epochs(params, optimizer, scheduler, inputs, val,
                                                  val_prepared, settings, steps, bar, history)
            self.train_time_s_ = time.perf_counter() - start
        finally:
            if bar is not None:
                bar.close()
        self.history_ = history
        self.best_epoch_ = best_epoch
        self.selection_ = "validation" if val is not None else "last"
        self.n_steps_ = epochs * steps
        self._set_trained({k: v.detach() for k, v in best_state.items()})

    def _epochs(self, params, optimizer, scheduler, inputs, val, val_prepared, settings, steps,
                bar, history):
        """The epochs; returns (best epoch, its parameters) and fills ``history``."""
        epochs, batch_size = settings["epochs"], settings["batch_size"]
        n_keys = self._torch.support_features_.shape[0]
        labels = self._torch.support_labels_
        generator = torch.Generator().manual_seed(settings["seed"])
        best_state = {k: p.detach().clone() for k, p in params.items()}
        best_epoch, best_accuracy = 0, -math.inf
        prepared_views: dict[int, dict[str, torch.Tensor]] = {}  # each view projected once
        for epoch in range(epochs):
            view = epoch % inputs.shape[0]
            if view not in prepared_views:
                prepared_views[view] = self._prepare(inputs[view])
            prepared = prepared_views[view]
            order = torch.randperm(n_keys, generator=generator).to(self.device_)
            total_loss = 0.0
            for step in range(steps):
                batch = order[step * batch_size:(step + 1) * batch_size]
                logits = self._train_logits(params, {k: v[batch] for k, v in prepared.items()})
                loss = torch.nn.functional.cross_entropy(logits, labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                total_loss += float(loss.detach()) * batch.numel()
                if bar is not None:
                    bar.update(1)
            record = {"epoch": epoch + 1, "train_loss": total_loss / n_keys,
                      "lr": float(scheduler.get_last_lr()[0]), "val_score": None}
            if val is not None:
                accuracy = self._accuracy(params, val_prepared, val[1])
                record["val_score"] = accuracy
                if accuracy > best_accuracy:
                    best_accuracy, best_epoch = accuracy, epoch + 1
                    best_state = {k: p.detach().clone() for k, p in params.items()}
            history.append(record)
            if bar is not None:
                bar.set_postfix(epoch=f"{epoch + 1}/{epochs}", loss=f"{record['train_loss']:.4f}",
                                val=("-" if val is None else f"{record['val_score']:.4f}"))
        if val is None and epochs:
            best_epoch = epochs
            best_state = {k: p.detach().clone() for k, p in params.items()}
        return best_epoch, best_state

    def _progress_bar(self, total_steps: int):
        if not self.progress or total_steps == 0:
            return None
        from ssp._utils.progress import progress_bar

        return progress_bar(total_steps, f"training {type(self).__name__}", "step", leave=False)

    @no_grad
    def _accuracy(self, params, prepared: dict[str, torch.Tensor], labels: torch.Tensor) -> float:
        """Top-1 accuracy (a fraction) under the training forward (chunked over queries)."""
        correct = 0
        n = labels.shape[0]
        rows = self._chunk_rows(self._torch.support_features_.shape[0])
        for start in range(0, n, rows):
            chunk = {k: v[start:start + rows] for k, v in prepared.items()}
            pred = self._train_logits(params, chunk).argmax(dim=1)
            correct += int((pred == labels[start:start + rows]).sum())
        return correct / n

    # ---- per-method hooks (subclasses) ---------------------------------------------------

    def _initial_params(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @no_grad
    def _prepare(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything of normalised inputs ``x`` ``[n, D]`` that does not depend on the trained
        parameters (projected views, frozen zero-shot logits), one row per input."""
        raise NotImplementedError

    def _train_logits(self, params, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def _set_trained(self, state: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError


# Constructor values from the method's own section (training settings), starting values of
# alpha / beta / gamma from the training-free section, search grid from it too.
_TRAINING_KEYS = ("epochs", "lr", "eps", "weight_decay", "batch_size")


def _training(cfg: Mapping[str, Any], section: str) -> dict:
    return {k: cfg[section][k] for k in _TRAINING_KEYS if k in cfg[section]}


def _tip_adapter_f_params(cfg: Mapping[str, Any], dim: int) -> dict:
    return {**cfg["tip_adapter"]["init"], **_training(cfg, "tip_adapter_f")}


@register_method("tip-adapter-f", title="Tip-Adapter-F", config_section="tip_adapter_f",
                 search_section="tip_adapter", search_axes=("beta", "alpha"), params=_tip_adapter_f_params,
                 fine_tuned=True,
                 aliases=("tip-f", "tipadapterf", "tip-adapter-finetuned"))
class TipAdapterF(_FineTuned, TipAdapter):
    """Tip-Adapter-F (Zhang et al., Tip-Adapter, ECCV 2022, Sec. 3.3): learnable cache keys.

    ``s · x Wᵀ + α · exp(−β (1 − x Θᵀ)) Y`` with ``Θ`` ``[N, D]`` initialised to the (projected)
    keys and trained with α, β fixed at the constructor's values; ``W`` and ``Y`` stay frozen.
    See the module docstring for the training inputs, schedule and epoch selection.

    Args:
        alpha, beta: residual ratio and sharpness (fixed during training, searchable after).
        epochs: training epochs (0: no training, the model equals :class:`TipAdapter`).
        lr, eps, weight_decay: AdamW settings (published: 1e-3, 1e-4, and AdamW's default 0.01).
        batch_size: support samples per step (published: 256).
        seed: seed of the shuffling generator.
        progress: show a tqdm bar over the training steps (epoch, training loss and
            validation accuracy after each epoch).
        projector, routing, logit_scale, chunk_size, device: as in :class:`TipAdapter`.

    Fitted attributes: those of :class:`TipAdapter`, with ``keys_`` [N, D] the trained keys
    ``Θ`` (grouped by class), plus ``initial_keys_`` [N, D], ``history_`` (one dict per epoch:
    ``epoch`` (1-based), ``train_loss``, ``lr``, ``val_score``: validation accuracy as a
    fraction like ``score()``, or None),
    ``best_epoch_`` (1-based; 0 when ``epochs == 0``), ``selection_`` ("validation" | "last"),
    ``training_inputs_`` ("views" | "keys"), ``n_views_`` (E, 0 for keys), ``n_steps_``,
    ``train_time_s_``.
    """

    _fit_time_params = ("projector",) + _TRAIN_PARAMS
    _parameter_constraints = {**TipAdapter._parameter_constraints, **_TRAIN_CONSTRAINTS}

    def __init__(self, *, alpha: float = 1.0, beta: float = 1.0, epochs: int = 20,
                 lr: float = 1e-3, eps: float = 1e-4, weight_decay: float = 0.01,
                 batch_size: int = 256, seed: int = 1, progress: bool = False,
                 projector: Any = None, routing: str = "paper", logit_scale: float = 100.0,
                 chunk_size: int | None = None, device: str | torch.device | None = None) -> None:
        self.alpha = alpha
        self.beta = beta
        self.epochs = epochs
        self.lr = lr
        self.eps = eps
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.seed = seed
        self.progress = progress
        self.projector = projector
        self.routing = routing
        self.logit_scale = logit_scale
        self.chunk_size = chunk_size
        self.device = device

    def _initial_params(self):
        self._torch.initial_keys_ = self._torch.keys_
        return {"keys": self._torch.keys_}

    @no_grad
    def _prepare(self, x):
        views = self._views(x, self._needed_views(None))
        return {"zero_shot": self._zero_shot_logits(views), "query": self._cache_query(views, None)}

    def _train_logits(self, params, batch):
        activation = cache_kernel(batch["query"] @ params["keys"].T, float(self.beta))
        return batch["zero_shot"] + float(self.alpha) * self.segments_.sum(activation)

    def _set_trained(self, state):
        self._torch.keys_ = state["keys"]


def _ape_t_params(cfg: Mapping[str, Any], dim: int) -> dict:
    sec = cfg["ape_t"]
    # a fraction of D or an absolute count, resolved against D at fit (as APE's)
    return {**cfg["ape"]["init"], **_training(cfg, "ape_t"),
            "n_channels": check_n_channels(sec["n_channels"], "ape_t.n_channels"),
            "criterion_weights": tuple(sec["criterion_weights"])}


@register_method("ape-t", title="APE-T", config_section="ape_t", search_section="ape",
                 search_axes=("beta", "alpha", "gamma"), grid_start=(0.1, 0.1, 0.0), params=_ape_t_params,
                 fine_tuned=True,
                 aliases=("apet", "ape-trained"))
class APET(_FineTuned, APE):
    """APE-T (Zhu et al., APE, ICCV 2023, Sec. 3.3): category residual and value weights.

    ``s · x W'ᵀ + α · exp(−β (1 − x_Ω F'_Ωᵀ)) (Y ⊙ v ⊙ exp(γ δ))`` where ``Ω`` are the
    ``n_channels`` channels of APE's criterion (with ``criterion_weights``), ``R`` ``[C, Q]``
    (init 0) is added to the normalised selected keys of class ``c`` (``F'_Ω = norm(F_Ω) + R[y]``)
    and to the text embedding's channels ``Ω`` in the zero-shot term (``W'``), and ``v`` ``[N]``
    (init 1) weighs each key's one-hot value. Nothing is re-normalised after the residual. At
    initialisation the logits are exactly :class:`APE`'s. Trained value weights may become
    negative; the logits and :func:`ssp.methods.search.validation_search` handle that.

    Args:
        alpha, beta, gamma: as in :class:`APE` (fixed during training, searchable after).
        n_channels: ``Q`` (published ``training_feat_num``): an int count, a float in
            ``(0, 1]`` a fraction of D, ``None`` all D channels (as :class:`APE`).
        criterion_weights: ``(w₀, w₁)`` of the channel criterion (published: (0.2, 0.8)).
        epochs, lr, eps, weight_decay, batch_size, seed, progress: as in :class:`TipAdapterF`
            (published APE-T: AdamW weight decay 0.1, batch 256, per-dataset lr/eps/epochs).
        projector, routing, logit_scale, chunk_size, device: as in :class:`APE`.

    Fitted attributes: those of :class:`APE`, with ``selected_keys_`` [N, Q] the trained
    ``F'_Ω``, plus ``initial_selected_keys_`` [N, Q], ``category_residual_`` [C, Q],
    ``value_weights_`` [N] (grouped by class, like ``keys_``), and the training record of
    :class:`TipAdapterF` (``history_``, ``best_epoch_``, ``selection_``, ``training_inputs_``,
    ``n_views_``, ``n_steps_``, ``train_time_s_``).
    """

    _fit_time_params = ("projector", "n_channels", "criterion_weights") + _TRAIN_PARAMS
    _parameter_constraints = {**APE._parameter_constraints, **_TRAIN_CONSTRAINTS}

    def __init__(self, *, alpha: float = 1.0, beta: float = 1.0, gamma: float = 0.1,
                 n_channels: int | float | None = None, criterion_weights: Sequence[float] = (0.2, 0.8),
                 epochs: int = 30, lr: float = 1e-3, eps: float = 1e-3, weight_decay: float = 0.1,
                 batch_size: int = 256, seed: int = 1, progress: bool = False,
                 projector: Any = None, routing: str = "paper", logit_scale: float = 100.0,
                 chunk_size: int | None = None, device: str | torch.device | None = None) -> None:
        self.alpha = alpha
        self.beta = beta
        self.gamma = gamma
        self.n_channels = n_channels
        self.criterion_weights = criterion_weights
        self.epochs = epochs
        self.lr = lr
        self.eps = eps
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.seed = seed
        self.progress = progress
        self.projector = projector
        self.routing = routing
        self.logit_scale = logit_scale
        self.chunk_size = chunk_size
        self.device = device

    # ---- training -----------------------------------------------------------------------

    def _initial_params(self):
        self._torch.initial_selected_keys_ = self._torch.selected_keys_
        n_classes, n_selected = len(self.classes_), int(self._torch.channels_.shape[0])
        like = self._torch.selected_keys_
        return {"residual": like.new_zeros(n_classes, n_selected),
                "values": like.new_ones(like.shape[0])}

    @no_grad
    def _prepare(self, x):
        views = self._views(x, self._needed_views(None))
        zs_view = self._route(None)[0]
        query = self._cache_query(views, None)
        return {"zero_shot": APE._zero_shot_logits(self, views),
                "zs_selected": views[zs_view][:, self._torch.channels_],
                "query": l2_normalize(query[:, self._torch.channels_])}

    def _train_logits(self, params, batch):
        residual, beta = params["residual"], float(self.beta)
        # The residual is constant over a class's keys, x_Ω F'_nᵀ = x_Ω F_Ω,nᵀ + x_Ω R_cᵀ, so
        # its factor leaves the class sum: cache_c = exp(β x_Ω R_cᵀ) Σ_{n in c} k(x_Ω F_Ω,nᵀ) w_n.
        # The [m, N] kernel then needs no gradient; only [m, C] and [N] terms do.
        with torch.no_grad():
            kernel = cache_kernel(batch["query"] @ self._torch.initial_selected_keys_.T, beta)
        class_shift = batch["query"] @ residual.T                                # [m, C]
        weights = params["values"] * torch.exp(float(self.gamma) * self._torch.key_divergence_)
        cache = torch.exp(beta * class_shift) * self.segments_.sum(kernel, weights)
        zero_shot = batch["zero_shot"] + float(self.logit_scale) * (batch["zs_selected"] @ residual.T)
        return zero_shot + float(self.alpha) * cache

    def _set_trained(self, state):
        self._torch.category_residual_ = state["residual"]
        self._torch.value_weights_ = state["values"]
        self._torch.selected_keys_ = self._torch.initial_selected_keys_ + state["residual"][self._torch.support_labels_]

    # ---- prediction with the trained state ------------------------------------------------

    def _zero_shot_logits(self, views, routing=None):
        logits = super()._zero_shot_logits(views, routing)
        if not hasattr(self, "category_residual_"):
            return logits  # during fit, before training
        query = views[self._route(routing)[0]][:, self._torch.channels_]
        return logits + float(self.logit_scale) * (query @ self._torch.category_residual_.T)

    def _terms(self, x, routing=None):
        """As :class:`APE`, plus the per-key value weights ``v`` ``[N]`` (may be negative):
        the cache values are ``Y ⊙ v ⊙ exp(γ δ)``."""
        zero_shot, affinity, log_weights = super()._terms(x, routing)
        return zero_shot, affinity, log_weights, self._torch.value_weights_

    def _value_weights(self) -> torch.Tensor:
        """``v ⊙ exp(γ δ)``: the trained value weights times APE's re-weighting."""
        return self._torch.value_weights_ * super()._value_weights()
