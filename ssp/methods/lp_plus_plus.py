"""LP++ (Huang et al., "LP++: A Surprisingly Strong Linear Probe for Few-Shot CLIP", CVPR 2024).

Spelling: the method is ``lp++`` wherever a method name is typed (CLI, configs' ``methods``, run
files, tables; ``lpp`` is accepted as an alias) and LP++ in prose; ``lpp`` is its config section,
and :class:`LPPlusPlus` / ``lp_plus_plus`` are the Python names (``+`` is not an identifier).

A linear probe on the image features whose logits are blended with the text logits through one
learnable multiplier per class::

    logits(x) = x Wᵀ + b + α ⊙ (x Tᵀ)        W [C, D], b [C], α [C], T [C, D] the text classifier

trained by full-batch gradient steps whose step sizes are computed from the data (no learning
rate to search), the iterate kept being the one with the best validation accuracy::

    clf = LPPlusPlus().fit(support_x, support_y, text_features=text,
                           val_features=val_x, val_labels=val_y)   # step selection only
    clf.predict(test_x)                                            # test data: touched once

**Initialisation.** ``W_k = n_k · μ_k`` (``n_k`` support images of class ``k``, ``μ_k`` the mean
of its training inputs: with the cache keys as inputs this is the class sum of the published
code); ``b`` drawn like a fresh ``torch.nn.Linear`` bias, ``U(−1/√D, 1/√D)``, from a generator
seeded with ``seed``; every ``α_k`` starts at ``init_alpha_scale · mean_k(mean_{n∈k} x_n·t_k)``
(the mean text cosine of each class's own support images, averaged over classes; published
scale 250).

**Steps.** Mean cross-entropy over the ``N`` training inputs ``Z`` (full batch). ``W`` and ``b``
take heavy-ball steps (momentum 0.9, PyTorch's SGD rule) of size ``η_W = 4N / λ_max(ZᵀZ)``;
every ``alpha_every`` steps ``α`` takes one step of size ``η_α = N / (4 max_k Σ_n (z_n·t_k)²)``
along the sum of the ``α`` gradients of all steps so far (the published code never clears that
gradient; we keep its behaviour, which produced the published numbers). After each step the
validation accuracy is measured; the last step with the best accuracy is kept (``>=``, as
published). Without validation data the last step is kept.

**Training inputs.** ``view_features`` ``[E, N, D]`` (augmented views of the support images)
are used as ``E·N`` training inputs when given (the published code trains on one augmented pass
of the support images); otherwise the support features themselves (``training_inputs_``).

**With an SSP projector** the image term reads the routing's cache view (``vision`` for
"paper") and the text term its zero-shot view and text (the language view and the projected
text for "paper"); training happens under the routing given at fit time.
"""
from __future__ import annotations

import math
import time
from typing import Any, Mapping

from ssp._checks import ROUTINGS
from ssp._lazy import torch
from ssp._utils.arrays import ArrayLike, to_tensor
from ssp._utils.normalize import l2_normalize
from ssp.methods.base import CLIPFeatureClassifier
from ssp._utils.params import Boolean, Integer, Options, Real
from ssp.methods.registry import register_method

__all__ = ["LPPlusPlus"]


def _lpp_params(cfg: Mapping[str, Any], dim: int) -> dict:
    section = cfg.get("lpp") or {}
    keys = ("epochs", "alpha_every", "init_alpha_scale", "momentum")
    return {k: section[k] for k in keys if k in section}


@register_method("lp++", title="LP++", config_section="lpp", params=_lpp_params, fine_tuned=True,
                 aliases=("lpp", "lp-plus-plus", "lpplusplus"))
class LPPlusPlus(CLIPFeatureClassifier):
    """LP++: ``x Wᵀ + b + α ⊙ (x Tᵀ)`` trained full-batch with data-derived step sizes
    (Huang et al., CVPR 2024; the module docstring gives the initialisation and the steps).

    Args:
        epochs: full-batch steps (published: 300). 0: the initialisation itself.
        alpha_every: steps between two updates of ``α`` (published: 10).
        init_alpha_scale: factor of the initial ``α`` (published: 250).
        momentum: heavy-ball momentum of the ``W``, ``b`` steps (published: 0.9).
        seed: seed of the bias initialisation.
        progress: show a tqdm bar over the steps.
        projector: optional ``SSPProjector`` (fitted, or fitted in ``fit`` from patch_features).
        routing: "paper" | "reference" | "vision": which views feed the two terms (fixed at fit).
        device: torch device; ``None`` = CUDA if available else CPU.

    Fitted attributes: ``weights_`` [C, D], ``bias_`` [C], ``alpha_`` [C], ``initial_alpha_``
    (float), ``step_size_w_``, ``step_size_alpha_`` (floats), ``history_`` (one dict per step:
    ``epoch`` 1-based, ``train_loss``, ``val_score``: validation accuracy as a fraction, or None),
    ``best_epoch_``
    (0: the initialisation), ``selection_`` ("validation" | "last"), ``training_inputs_``
    ("views" | "keys"), ``n_views_``, ``n_steps_``, ``train_time_s_``, and those of every
    CLIP-feature classifier (``classes_``, ``text_features_``, ``projector_``, ...).
    """

    _fit_time_params = ("projector", "routing", "epochs", "alpha_every", "init_alpha_scale",
                        "momentum", "seed")
    new_class_rule = ("zero-shot: the text term x t^T of the new classes with one common multiplier (a class "
                      "without shots has no learned alpha or W), i.e. zero-shot CLIP's ranking; with an SSP "
                      "projector query and text are vision-projected")

    _parameter_constraints = {"epochs": [Integer(0)], "alpha_every": [Integer(1)],
                              "init_alpha_scale": [Real(0)], "momentum": [Real(0, 1, closed="left")],
                              "seed": [Integer(0)], "progress": [Boolean()], "routing": [Options(ROUTINGS)]}

    def __init__(self, *, epochs: int = 300, alpha_every: int = 10, init_alpha_scale: float = 250.0,
                 momentum: float = 0.9, seed: int = 1, progress: bool = False, projector: Any = None,
                 routing: str = "paper", device: str | torch.device | None = None) -> None:
        self.epochs = epochs
        self.alpha_every = alpha_every
        self.init_alpha_scale = init_alpha_scale
        self.momentum = momentum
        self.seed = seed
        self.progress = progress
        self.projector = projector
        self.routing = routing
        self.device = device

    # ---- fitting ------------------------------------------------------------------------

    def fit(self, image_features: ArrayLike, labels: ArrayLike, *, text_features: ArrayLike,
            val_features: ArrayLike | None = None, val_labels: ArrayLike | None = None,
            view_features: ArrayLike | None = None, patch_features: ArrayLike | None = None):
        """Initialise from the support set and train.

        Args:
            image_features: ``[N, D]`` support features; labels: ``[N]``.
            text_features: ``[C, D]`` text classifier.
            val_features, val_labels: ``[M, D]`` / ``[M]`` validation pair, used only to select
                the step (never pass test data).
            view_features: ``[E, N, D]`` augmented views of the support images, in the order of
                ``image_features``: the training inputs when given.
            patch_features: ``[N, L, D]`` to fit ``projector``.

        A failed fit leaves the model unfitted, never half-fitted.
        """
        return super().fit(image_features, labels, text_features=text_features, patch_features=patch_features,
                           view_features=view_features, val_features=val_features, val_labels=val_labels)

    def _fit(self, image_features, labels, text_features, patch_features=None, view_features=None,
             val_features=None, val_labels=None) -> None:
        self._fit_common(image_features, labels, text_features, patch_features)
        inputs, input_labels = self._training_inputs(view_features)
        val = self._validation_pair(val_features, val_labels)
        settings = {"epochs": int(self.epochs), "alpha_every": int(self.alpha_every), "seed": int(self.seed),
                    "momentum": float(self.momentum), "init_alpha_scale": float(self.init_alpha_scale)}
        self._train(inputs, input_labels, val, settings)

    def _training_inputs(self, view_features):
        """``([N', D] normalised inputs, [N'] labels)``: the views stacked, or the support keys."""
        keys, labels = self._torch.support_features_, self._torch.support_labels_
        if view_features is None:
            self.training_inputs_, self.n_views_ = "keys", 0
            return keys, labels
        views = to_tensor(view_features, "view_features", ndim=3, device=self.device_)
        n_keys, dim = keys.shape
        if views.shape[0] < 1 or tuple(views.shape[1:]) != (n_keys, dim):
            raise ValueError(
                f"view_features must be [E, N, D] = [E, {n_keys}, {dim}] (E >= 1 augmented views "
                f"of the support images, in the order of image_features), got {tuple(views.shape)}")
        self.training_inputs_, self.n_views_ = "views", int(views.shape[0])
        views = l2_normalize(views.to(self.dtype_))[:, self._torch.support_order_]
        return views.reshape(-1, dim), labels.repeat(views.shape[0])

    def _inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised rows ``x`` ``[n, D]`` -> (image-term inputs ``[n, D]``, text cosines ``[n, C]``)
        under the fit routing."""
        zs_view, text_kind, image_view = self._route()
        views = self._views(x, {zs_view, image_view} - {"plain"})
        text = (self._torch.projected_text_features_ if text_kind == "projected"
                else self._torch.text_features_)
        return views[image_view], views[zs_view] @ text.T

    def _train(self, inputs, labels, val, settings) -> None:
        n_classes = len(self.classes_)
        z, cosines = self._inputs(inputs)                                 # [N', D], [N', C]
        n, dim = z.shape
        onehot = torch.nn.functional.one_hot(labels, n_classes).to(z.dtype)
        counts = torch.bincount(self._torch.support_labels_, minlength=n_classes).to(z.dtype)
        input_counts = onehot.sum(0)
        means = (onehot.T @ z) / input_counts.clamp_min(1)[:, None]
        weights = counts[:, None] * means                                 # n_k · μ_k
        generator = torch.Generator().manual_seed(settings["seed"])
        bound = 1.0 / math.sqrt(dim)
        bias = ((torch.rand(n_classes, generator=generator, dtype=torch.float64) * 2 - 1) * bound)
        bias = bias.to(device=z.device, dtype=z.dtype)
        own = (onehot * cosines).sum(0) / input_counts.clamp_min(1)      # mean own-class cosine
        present = input_counts > 0
        initial_alpha = settings["init_alpha_scale"] * float(own[present].mean())
        alpha = torch.full((n_classes,), initial_alpha, dtype=z.dtype, device=z.device)
        gram_max = float(torch.linalg.eigvalsh((z.T @ z).double()).max())
        step_w = 4.0 * n / gram_max
        step_alpha = n / (4.0 * float((cosines ** 2).sum(0).max()))
        self.initial_alpha_, self.step_size_w_, self.step_size_alpha_ = initial_alpha, step_w, step_alpha

        val_inputs = self._inputs(val[0]) if val is not None else None
        state = (weights.clone(), bias.clone(), alpha.clone())
        best_epoch, best_accuracy = 0, -math.inf
        if val is not None:
            best_accuracy = self._accuracy(state, val_inputs, val[1])
        history: list[dict[str, Any]] = []
        velocity_w = velocity_b = None
        alpha_grad = torch.zeros_like(alpha)
        bar = self._progress_bar(settings["epochs"])
        start = time.perf_counter()
        try:
            for epoch in range(1, settings["epochs"] + 1):
                logits = z @ weights.T + bias + alpha * cosines
                loss = torch.nn.functional.cross_entropy(logits, labels)
                residual = (torch.softmax(logits, dim=1) - onehot) / n        # d loss / d logits
                grad_w, grad_b = residual.T @ z, residual.sum(0)
                alpha_grad += (residual * cosines).sum(0)
                if velocity_w is None:
                    velocity_w, velocity_b = grad_w, grad_b
                else:
                    velocity_w = settings["momentum"] * velocity_w + grad_w
                    velocity_b = settings["momentum"] * velocity_b + grad_b
                weights = weights - step_w * velocity_w
                bias = bias - step_w * velocity_b
                if epoch % settings["alpha_every"] == 0:
                    alpha = alpha - step_alpha * alpha_grad
                record = {"epoch": epoch, "train_loss": float(loss), "val_score": None}
                if val is not None:
                    accuracy = self._accuracy((weights, bias, alpha), val_inputs, val[1])
                    record["val_score"] = accuracy
                    if accuracy >= best_accuracy:
                        best_accuracy, best_epoch, state = accuracy, epoch, (weights, bias, alpha)
                history.append(record)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        if val is None:
            best_epoch, state = settings["epochs"], (weights, bias, alpha)
        self.train_time_s_ = time.perf_counter() - start
        self.history_, self.best_epoch_, self.n_steps_ = history, best_epoch, settings["epochs"]
        self.selection_ = "validation" if val is not None else "last"
        self._torch.weights_, self._torch.bias_, self._torch.alpha_ = state

    def _progress_bar(self, total: int):
        if not self.progress or total == 0:
            return None
        from ssp._utils.progress import progress_bar

        return progress_bar(total, "training LP++", "step", leave=False)

    @staticmethod
    def _blend(state, inputs) -> torch.Tensor:
        weights, bias, alpha = state
        z, cosines = inputs
        return z @ weights.T + bias + alpha * cosines

    def _accuracy(self, state, inputs, labels) -> float:
        """Validation accuracy, a fraction in [0, 1] (the unit of ``score``)."""
        pred = self._blend(state, inputs).argmax(dim=1)
        return float((pred == labels).double().mean())

    # ---- queries --------------------------------------------------------------------------

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        t = self._torch
        return self._blend((t.weights_, t.bias_, t.alpha_), self._inputs(x))
