"""TIMO and TIMO-S: GDA with text-image mutual guidance (Li et al., "Text and Image Are Mutually
Beneficial: Enhancing Training-Free Few-Shot Classification with CLIP", AAAI 2025).

Both need several prompts per class (``prompt_features`` ``[C, P, D]``, e.g. CuPL sentences
encoded one by one)::

    clf = TIMO(gamma=50).fit(keys, labels, text_features=text, prompt_features=prompts,
                             view_features=views)
    validation_search(clf, val_x, val_y)          # alpha (TIMO); gamma, text_fraction, alpha (TIMO-S)
    clf.predict(test_x)

With support samples of ``C`` classes, unit prompts ``t_{c,p}`` and the unit class prototypes
``p_c`` (the normalised mean of the class's support features):

* **IGT** (image-guided text): matching scores ``m_{c,p} = p_c · t_{c,p}``, prompt weights
  ``w_c = softmax(γ m_c / ‖m_c‖₂)`` over the class's ``P`` prompts, text head
  ``t̃_c = norm(Σ_p w_{c,p} t_{c,p})``;
* **TGI** (text-guided image): each class's prompts, in decreasing ``m``, each scaled by its
  matching score (``m_{c,p} t_{c,p}``) join the image samples of GDA (:mod:`ssp.methods.gda`)
  as ``β`` extra samples of their class (cycling through the ``P`` prompts when ``β > P``);
  GDA's shared-covariance Gaussians on the union give ``W`` and ``b``;
* logits ``s · x t̃ᵀ + α (x W + b)``.

TIMO uses ``β = P`` and a fixed ``γ`` (50; 1 on ImageNet, 100 on Flowers102, as released) and
searches ``α``. TIMO-S also searches ``γ`` (5, 10, ..., 100) and ``β`` (10 counts from 1 to
``2P``: ``text_fraction`` in [0, 1] maps to ``int(1 + text_fraction (2P − 1))``). ``gamma_selection`` says how
``γ`` is chosen: ``"zero-shot"`` (the released code: the first ``γ`` whose IGT head alone is most
accurate on validation, then ``β`` and ``α``) or ``"joint"`` (all three on TIMO's own validation
accuracy). docs/baselines.md lists where this follows the released code and where it is ours.

The released code adds the zero-shot term with the factor on it (``α' x t̃ᵀ + x W + b``); for
``arg max`` that is ``s x t̃ᵀ + (s / α') (x W + b)``, so its grid ``α' = 10⁻⁴ … 10⁴`` is this
module's ``α = 10⁻² … 10⁶`` (the default ``timo.search.alpha``).

With one prompt per class IGT has nothing to weigh (every weight is 1): ``fit`` warns, and TIMO is
GDA with the text head as ``β`` extra samples per class. ``gamma`` and ``text_fraction`` may change after
``fit`` (the search sets them): the head and the Gaussians of new values are computed from the
stored moments when first used. With ``projector=SSPProjector(...)`` the image samples and the
text samples of TGI are vision-projected (as in GDA), the IGT weights come from the unprojected
features, and the projected head is the weighted sum of the prompts' language views.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ssp._checks import ROUTINGS, check_real
from ssp._lazy import torch
from ssp._utils.arrays import ArrayLike, to_tensor
from ssp._utils.normalize import l2_normalize
from ssp._utils.warn import warn
from ssp.methods.base import CLIPFeatureClassifier
from ssp.methods.gda import ClassMoments, linear_discriminant, shared_gaussian
from ssp._utils.params import Options, Real
from ssp.methods.registry import default_config, register_method
from ssp.methods.search import SearchAxis

__all__ = ["TIMO", "TIMOS", "igt_weights", "prompt_weights", "igt_text", "text_sample_count"]

GAMMA_SELECTIONS = ("zero-shot", "joint")
_BLOCK_ELEMENTS = 1 << 24


def igt_weights(prototypes: torch.Tensor, prompts: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """IGT: ``(matching scores m [C, P], weights w [C, P])`` from unit prototypes ``[C, D]`` and
    unit prompts ``[C, P, D]``: ``w_c = softmax(γ m_c / ‖m_c‖₂)``."""
    matching = torch.einsum("cd,cpd->cp", prototypes, prompts)
    return matching, prompt_weights(matching, gamma)


def prompt_weights(matching: torch.Tensor, gamma: float) -> torch.Tensor:
    """IGT's prompt weights ``softmax(γ m_c / ‖m_c‖₂)`` ``[C, P]`` from matching scores ``[C, P]``."""
    scaled = matching / matching.norm(dim=1, keepdim=True).clamp_min(torch.finfo(matching.dtype).tiny)
    return torch.softmax(float(gamma) * scaled, dim=1)


def igt_text(weights: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """The IGT head ``norm(Σ_p w_{c,p} t_{c,p})`` ``[C, D]`` from weights ``[C, P]`` and prompts ``[C, P, D]``."""
    return l2_normalize(torch.einsum("cp,cpd->cd", weights, prompts))


def text_sample_count(text_fraction: float | None, n_prompts: int) -> int:
    """TGI's text samples per class: ``P`` for ``text_fraction=None`` (TIMO), else ``int(1 + text_fraction (2P − 1))``
    (TIMO-S's scale: 0 -> 1, 1 -> 2P)."""
    if text_fraction is None:
        return n_prompts
    return max(1, int(1 + float(text_fraction) * (2 * n_prompts - 1) + 1e-9))


def _timo_params(cfg: Mapping[str, Any], dim: int) -> dict:
    return dict(cfg["timo"]["init"])


def _timo_s_params(cfg: Mapping[str, Any], dim: int) -> dict:
    section = cfg["timo"]
    return {**section["init"], "gamma_selection": section.get("gamma_selection", "zero-shot")}


def _grid_builder(*axes: str):
    """Grid of ``axes`` from ``timo.search`` (an axis left out: the default config's): ``alpha:
    [low, high, points]`` log-spaced; ``gamma`` / ``text_fraction``: lists of values."""

    def build(spec: Any, section: Mapping[str, Any] | None) -> dict:
        defaults = (default_config().get(spec.search_section) or {}).get("search") or {}
        given = (section or {}).get("search") or {}
        if not isinstance(given, Mapping):
            raise ValueError(f"config '{spec.search_section}.search' must map axes to values, got {given!r}")
        grid = {}
        for axis in axes:
            value = given.get(axis, defaults.get(axis))
            try:
                if axis == "alpha":
                    low, high, points = value
                    ok = isinstance(points, int) and points >= 1 and 0 < float(low) <= float(high)
                    arr = np.geomspace(float(low), float(high), points) if ok and points > 1 else np.array([float(low)])
                else:
                    arr = np.asarray([float(v) for v in value], dtype=np.float64)
                    ok = arr.size > 0 and bool(np.isfinite(arr).all()) and (
                        axis != "text_fraction" or bool(((arr >= 0) & (arr <= 1)).all()))
            except (TypeError, ValueError):
                ok = False
            if not ok:
                form = "[low, high, points] with 0 < low <= high" if axis == "alpha" else (
                    "a list of numbers in [0, 1]" if axis == "text_fraction" else "a list of numbers")
                raise ValueError(f"config '{spec.search_section}.search.{axis}' must be {form}, got {value!r}")
            grid[axis] = arr
        return grid

    return build


@register_method("timo", title="TIMO", config_section="timo", search_section="timo", search_axes=("alpha",),
                 params=_timo_params, uses_views=True, uses_prompts=True, grid_builder=_grid_builder("alpha"))
class TIMO(CLIPFeatureClassifier):
    """TIMO (Li et al., AAAI 2025): GDA with image-guided text and text-guided image samples
    (module docstring).

    Args:
        alpha: weight α of the GDA term (searched on validation).
        gamma: IGT temperature γ.
        text_fraction: ``None``: ``P`` text samples per class (TIMO); a number in [0, 1]:
            ``int(1 + text_fraction (2P − 1))`` (TIMO-S's scale, :func:`text_sample_count`).
        projector, routing: SSP projector and routing (the GDA term plays the cache term's part).
        logit_scale: zero-shot scale s.
        device: torch device; ``None`` = CUDA if available else CPU.

    Fitted attributes: those of :class:`~ssp.methods.gda.GDA` (``class_means_``, ``precision_``,
    ``weights_``, ``bias_`` at the fitted ``gamma`` / ``text_fraction``), plus ``matching_scores_`` [C, P],
    ``igt_weights_`` [C, P], ``igt_text_features_`` [C, D], ``n_prompts_`` (P),
    ``n_text_samples_`` (β per class), ``training_inputs_``, ``n_views_``, ``n_samples_``.
    """

    _parameter_constraints = {"alpha": [Real()], "gamma": [Real()], "text_fraction": [Real(0.0, 1.0), None],
                              "routing": [Options(ROUTINGS)], "logit_scale": [Real()]}
    search_space = {"alpha": SearchAxis(minimum=0.0, sane=(1e-3, 1e7))}  # one decade past the default grid

    def __init__(self, *, alpha: float = 1.0, gamma: float = 50.0, text_fraction: float | None = None,
                 projector: Any = None, routing: str = "paper", logit_scale: float = 100.0,
                 device: str | torch.device | None = None) -> None:
        self.alpha = alpha
        self.gamma = gamma
        self.text_fraction = text_fraction
        self.projector = projector
        self.routing = routing
        self.logit_scale = logit_scale
        self.device = device

    def fit(self, image_features: ArrayLike, labels: ArrayLike, *, text_features: ArrayLike,
            prompt_features: ArrayLike | None = None, view_features: ArrayLike | None = None,
            patch_features: ArrayLike | None = None) -> "TIMO":
        """Fit on the support set and the prompts.

        Args:
            image_features: ``[N, D]`` support features (any order, unequal shots allowed).
            labels: ``[N]`` support labels.
            text_features: ``[C, D]`` text classifier (the prompts' average head; fits the projector).
            prompt_features: ``[C, P, D]`` per-prompt text features. ``None``: ``text_features``
                as the single prompt of each class (a warning: IGT has nothing to weigh).
            view_features: ``[E, N, D]`` augmented views of the support images (GDA's samples).
            patch_features: ``[N, L, D]`` to fit ``projector``.

        A failed fit leaves the model unfitted, never half-fitted.
        """
        return super().fit(image_features, labels, text_features=text_features, prompt_features=prompt_features,
                           view_features=view_features, patch_features=patch_features)

    def _fit(self, image_features, labels, text_features, patch_features=None, view_features=None,
             prompt_features=None) -> None:
        self._fit_common(image_features, labels, text_features, patch_features)
        self._fit_prompts(text_features if prompt_features is None else prompt_features,
                          given=prompt_features is not None)
        self._fit_image_moments(view_features)
        self._state_cache: dict = {}
        state = self._state(float(self.gamma), self.text_fraction)
        for name in ("class_means_", "precision_", "weights_", "bias_", "igt_weights_", "igt_text_features_"):
            setattr(self._torch, name, state[name])
        self.n_text_samples_ = state["n_text"]

    # ---- fitting ------------------------------------------------------------------------

    def _fit_prompts(self, prompt_features: ArrayLike, *, given: bool) -> None:
        n_classes, dim = len(self.classes_), self.n_features_in_
        prompts = to_tensor(prompt_features, "prompt_features", device=self.device_)
        if prompts.ndim == 2 and not given:
            prompts = prompts[:, None, :]
        if prompts.ndim != 3 or prompts.shape[0] != n_classes or prompts.shape[2] != dim or prompts.shape[1] < 1:
            raise ValueError(f"prompt_features must be [C, P, D] = [{n_classes}, P, {dim}] (P >= 1 prompts per "
                             f"class, C and D of text_features), got {tuple(prompts.shape)}")
        bad = (~torch.isfinite(prompts)).any(dim=2) | (prompts == 0).all(dim=2)
        if bool(bad.any()):
            c, p = torch.nonzero(bad)[0].tolist()
            raise ValueError(f"prompt_features[{c}, {p}] is zero or not finite; every prompt needs a text embedding")
        prompts = l2_normalize(prompts.to(torch.float64))
        self.n_prompts_ = int(prompts.shape[1])
        if self.n_prompts_ == 1:
            warn("TIMO: one prompt per class, so IGT has nothing to weigh (every prompt weight is 1) and TIMO is "
                 "GDA with the text head as extra samples; give several prompts per class (prompt_features "
                 "[C, P, D]: --prompts cupl, or --prompt-features FILE)")
        support = self._torch.support_features_.to(torch.float64)
        sums = torch.zeros(n_classes, dim, dtype=torch.float64, device=self.device_)
        sums.index_add_(0, self._torch.support_labels_, support)
        prototypes = l2_normalize(sums)
        matching, _ = igt_weights(prototypes, prompts, 1.0)
        order = torch.sort(matching, dim=1, descending=True, stable=True).indices
        self._torch.matching_scores_ = matching
        self._prompts = prompts
        self._sorted_scores = torch.gather(matching, 1, order)
        sorted_prompts = torch.gather(prompts, 1, order[:, :, None].expand_as(prompts))
        self._language_prompts = None
        if self.projector_ is not None:
            flat = sorted_prompts.reshape(-1, dim)
            sorted_prompts = self._project(flat, "vision").reshape(prompts.shape)
            self._language_prompts = self._project(prompts.reshape(-1, dim), "language").reshape(prompts.shape)
        self._sorted_samples = sorted_prompts

    def _project(self, x: torch.Tensor, view: str) -> torch.Tensor:
        return l2_normalize(to_tensor(self.projector_.transform(x, view=view), f"projector view {view!r}",
                                      device=self.device_, dtype=torch.float64))

    def _fit_image_moments(self, view_features: ArrayLike | None) -> None:
        support = self._torch.support_features_
        if view_features is None:
            blocks = [support]
        else:
            views = to_tensor(view_features, "view_features", ndim=3, device=self.device_)
            if views.shape[0] < 1 or tuple(views.shape[1:]) != tuple(support.shape):
                raise ValueError(f"view_features must be [E, N, D] = [E, {support.shape[0]}, {support.shape[1]}] "
                                 f"(E >= 1 augmented views of the support images, in the order of image_features), "
                                 f"got {tuple(views.shape)}")
            blocks = (views[e][self._torch.support_order_] for e in range(views.shape[0]))
        moments = ClassMoments.zeros(len(self.classes_), self.n_features_in_, device=self.device_)
        n_views = 0
        for block in blocks:
            block = l2_normalize(block.to(torch.float64))
            moments.add(self._project(block, "vision") if self.projector_ is not None else block,
                        self._torch.support_labels_)
            n_views += 1
        self._image_moments = moments
        self.training_inputs_ = "keys" if view_features is None else "views"
        self.n_views_ = n_views if view_features is not None else 0

    def _text_moments(self, n_text: int) -> ClassMoments:
        """TGI's ``n_text`` samples per class: the prompts in decreasing matching score, cycled,
        each scaled by its score."""
        n_classes, n_prompts, dim = self._sorted_samples.shape
        rank = torch.arange(n_prompts, device=self.device_)
        uses = (n_text // n_prompts + (rank < n_text % n_prompts)).to(torch.float64)   # [P]
        scale = self._sorted_scores * uses.sqrt()                                       # [C, P]
        x = (self._sorted_samples * scale[:, :, None]).reshape(-1, dim)
        sums = torch.einsum("cp,cpd->cd", self._sorted_scores * uses, self._sorted_samples)
        counts = torch.full((n_classes,), float(n_text), dtype=torch.float64, device=self.device_)
        return ClassMoments(sums, x.T @ x, counts)

    def _heads(self, gamma: float) -> dict:
        weights = prompt_weights(self._torch.matching_scores_, gamma)
        heads = {"igt_weights_": weights, "plain": igt_text(weights, self._prompts)}
        heads["projected"] = None if self._language_prompts is None else igt_text(weights, self._language_prompts)
        heads["igt_text_features_"] = heads["plain"]
        return heads

    def _gaussian(self, n_text: int) -> dict:
        moments = self._image_moments + self._text_moments(n_text)
        means, precision, degenerate = shared_gaussian(moments)
        if degenerate:
            warn("TIMO: the within-class covariance of the image and text samples is zero; the GDA term is the "
                 "same for every class")
        weights, bias = linear_discriminant(means, precision)
        self.n_samples_ = int(moments.counts.sum())
        return {"class_means_": means, "precision_": precision, "weights_": weights, "bias_": bias}

    def _state(self, gamma: float, text_fraction: float | None) -> dict:
        """IGT head and TGI Gaussians at ``(gamma, text_fraction)`` (cached per value)."""
        n_text = text_sample_count(text_fraction, self.n_prompts_)
        key_h, key_g = ("heads", float(gamma)), ("gauss", n_text)
        cache = self._state_cache
        if key_h not in cache:
            cache[key_h] = self._heads(gamma)
        if key_g not in cache:
            cache[key_g] = self._gaussian(n_text)
        return {**cache[key_h], **cache[key_g], "n_text": n_text}

    # ---- logits ---------------------------------------------------------------------------

    def _parts(self, x: torch.Tensor, state: dict, routing: str | None = None,
               zero_shot: bool = True, gda: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(s · x t̃ᵀ, x W + b)`` ``[M, C]`` in ``dtype_`` for normalised queries ``x`` (``None``
        for a term not asked for)."""
        zs_view, text_kind, gda_view = self._route(routing)
        views = self._views(x, (({zs_view} if zero_shot else set()) | ({gda_view} if gda else set())) - {"plain"})
        zs_term = gda_term = None
        if zero_shot:
            head = state["projected"] if text_kind == "projected" else state["plain"]
            zs_term = float(self.logit_scale) * (views[zs_view] @ head.to(self.dtype_).T)
        if gda:
            gda_term = (views[gda_view].to(torch.float64) @ state["weights_"] + state["bias_"]).to(self.dtype_)
        return zs_term, gda_term

    def _current_state(self) -> dict:
        self._validate_params()  # gamma / text_fraction may have been set after fit
        return self._state(float(self.gamma), self.text_fraction)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        alpha = check_real(self.alpha, "alpha")
        zero_shot, gda = self._parts(x, self._current_state())
        return zero_shot + alpha * gda

    def _selection(self) -> str:
        return "joint"

    def search_counts(self, val_features: torch.Tensor, val_labels: torch.Tensor,
                       axes: Mapping[str, np.ndarray], routings: list[str]) -> np.ndarray:
        """Correct validation predictions ``[R, *axes]`` for every routing and grid point
        (``ssp.methods.search``): one Gaussian per β, one head per γ, all α in one arg-max."""
        self._check_fitted()
        gammas = [float(g) for g in axes.get("gamma", [self.gamma])]
        fractions = [float(b) for b in axes["text_fraction"]] if "text_fraction" in axes else [self.text_fraction]
        alphas = [float(a) for a in axes["alpha"]]
        x = self._queries(val_features)
        alpha_t = torch.tensor(alphas, dtype=self.dtype_, device=self.device_)[:, None, None]
        rows = max(1, _BLOCK_ELEMENTS // max(len(self.classes_) * len(alphas), 1))
        correct = np.zeros((len(routings), len(gammas), len(fractions), len(alphas)), dtype=np.int64)
        head_correct = np.zeros((len(routings), len(gammas)), dtype=np.int64)
        states = [[self._state(gamma, text_fraction) for text_fraction in fractions] for gamma in gammas]
        for r, routing in enumerate(routings):
            for start in range(0, x.shape[0], rows):
                chunk, truth = x[start:start + rows], val_labels[start:start + rows]
                # the zero-shot term depends on gamma only, the GDA term on text_fraction only
                gdas = [self._parts(chunk, states[0][b], routing, zero_shot=False)[1] for b in range(len(fractions))]
                for g in range(len(gammas)):
                    zero_shot = self._parts(chunk, states[g][0], routing, gda=False)[0]
                    head_correct[r, g] += int((zero_shot.argmax(1) == truth).sum())
                    for b, gda in enumerate(gdas):   # every alpha at once: [A, m, C], the predict expression
                        hits = ((zero_shot[None] + alpha_t * gda[None]).argmax(2) == truth[None]).sum(1)
                        correct[r, g, b] += hits.cpu().numpy()
        if self._selection() == "zero-shot" and len(gammas) > 1:
            # the released code's choice: gamma by the IGT head's own validation accuracy; other
            # gammas are no candidates (scored -1)
            best = head_correct.argmax(axis=1)
            for r in range(len(routings)):
                correct[r, np.arange(len(gammas)) != best[r]] = -1
        self.search_head_correct_ = head_correct
        shape = [len(routings)] + [len(axes[a]) for a in axes]
        return correct.reshape(shape)

    def fit_details(self) -> dict:
        """What a run JSON records about IGT and TGI (``details``)."""
        self._check_fitted()
        state = self._current_state()
        weights = state["igt_weights_"].cpu().numpy()
        n_prompts = weights.shape[1]
        entropy = -(weights * np.log(np.clip(weights, 1e-300, None))).sum(1)
        return {"prompts_per_class": n_prompts, "text_samples_per_class": state["n_text"],
                "igt_weight_min": float(weights.min()), "igt_weight_max": float(weights.max()),
                "igt_weight_spread_mean": float((weights.max(1) - weights.min(1)).mean()),
                "igt_effective_prompts_mean": float(np.exp(entropy).mean()),
                "igt_has_nothing_to_weigh": n_prompts == 1,
                "training_inputs": self.training_inputs_, "n_samples": self.n_samples_}


@register_method("timo-s", title="TIMO-S", config_section="timo", search_section="timo",
                 search_axes=("gamma", "text_fraction", "alpha"), params=_timo_s_params, uses_views=True,
                 uses_prompts=True, grid_builder=_grid_builder("gamma", "text_fraction", "alpha"), aliases=("timos",))
class TIMOS(TIMO):
    """TIMO-S: TIMO with ``gamma`` and ``text_fraction`` searched on validation too (module docstring).

    Args:
        gamma_selection: ``"zero-shot"`` (released code: γ by the IGT head's own validation
            accuracy, then β and α) or ``"joint"`` (γ, β, α together on TIMO's accuracy).
        others: as :class:`TIMO`.
    """

    _parameter_constraints = {**TIMO._parameter_constraints, "gamma_selection": [Options(GAMMA_SELECTIONS)]}
    search_space = {"gamma": SearchAxis(minimum=0.0), "text_fraction": SearchAxis(minimum=0.0),
                    "alpha": TIMO.search_space["alpha"]}

    def __init__(self, *, alpha: float = 1.0, gamma: float = 50.0, text_fraction: float | None = None,
                 gamma_selection: str = "zero-shot", projector: Any = None, routing: str = "paper",
                 logit_scale: float = 100.0, device: str | torch.device | None = None) -> None:
        super().__init__(alpha=alpha, gamma=gamma, text_fraction=text_fraction, projector=projector, routing=routing,
                         logit_scale=logit_scale, device=device)
        self.gamma_selection = gamma_selection

    def _selection(self) -> str:
        return self.gamma_selection

