"""The method registry: one table that the CLI, the experiment runner and the search read.

Each entry (:class:`MethodSpec`) names an estimator by import path, so reading the table
imports no torch (``ssp-fewshot --help`` stays fast), and says where its constructor
parameters and its search grid come from in the merged config::

    spec = get_method("tip-adapter")          # aliases: "tip", "tip_adapter", "TipAdapter"
    model = spec.build(cfg, n_features=512, projector=None, device="cpu")
    grid = spec.grid(cfg)                    # {"beta": [...], "alpha": [...]} from cfg["tip_adapter"]

Every method also runs with an SSP projector: ``"<name>+ssp"`` (:func:`parse_method`). A new
method is one :func:`register_method` call.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

__all__ = ["MethodSpec", "register_method", "get_method", "parse_method", "method_names",
           "registered_methods", "spec_for_estimator", "SSP_SUFFIX"]

SSP_SUFFIX = "+ssp"

# (section of the merged config, number of the estimator's features D) -> constructor kwargs
ParamsFn = Callable[[Mapping[str, Any], int], dict]


@dataclass(frozen=True)
class MethodSpec:
    """One method of the table.

    Attributes:
        name: canonical name used by the CLI, configs, run files and tables (``"tip-adapter"``).
        title: display name (``"Tip-Adapter"``).
        estimator: ``"module:Class"`` of the estimator, imported on first use.
        config_section: the config section its constructor parameters come from (``None``: none).
        search_section: the config section holding ``search_scale`` / ``search_step`` of its grid.
        search_axes: hyper-parameters searched on validation, in search order (``()``: none).
        default_scale, default_step: the grid used when no config gives one.
        params: ``(cfg, n_features) -> kwargs`` for the constructor (``None``: no parameters).
        fine_tuned: trained by gradient descent; ``fit`` also takes validation features (epoch
            selection) and the augmented views of the support set.
        aliases: other spellings accepted by :func:`get_method`.
    """

    name: str
    title: str
    estimator: str
    config_section: str | None = None
    search_section: str | None = None
    search_axes: tuple[str, ...] = ()
    default_scale: tuple[float, ...] = ()
    default_step: tuple[int, ...] = ()
    params: ParamsFn | None = field(default=None, compare=False)
    fine_tuned: bool = False
    aliases: tuple[str, ...] = ()

    def estimator_class(self) -> type:
        module, _, attr = self.estimator.partition(":")
        return getattr(importlib.import_module(module), attr)

    def constructor_params(self, cfg: Mapping[str, Any], n_features: int) -> dict:
        """Constructor keyword arguments from the merged config ``cfg`` for ``n_features`` = D."""
        return dict(self.params(cfg, n_features)) if self.params is not None else {}

    def build(self, cfg: Mapping[str, Any], *, n_features: int, projector: Any = None,
              device: Any = None, **extra: Any) -> Any:
        """A new, unfitted estimator configured from ``cfg`` (``extra`` overrides)."""
        kwargs = {**self.constructor_params(cfg, n_features), **extra}
        return self.estimator_class()(**kwargs, projector=projector, device=device)

    def grid(self, cfg: Mapping[str, Any] | None = None) -> dict | None:
        """The search grid ``{axis: float64 array}``: from ``cfg[search_section]`` when given,
        the method's default grid otherwise; ``None`` when nothing is searched."""
        if not self.search_axes:
            return None
        from ssp.search import make_grid

        section = (cfg or {}).get(self.search_section or "", None)
        if section is None:
            return make_grid(self.name)
        return make_grid(self.name, section["search_scale"], section["search_step"])


_REGISTRY: dict[str, MethodSpec] = {}
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    return str(name).strip().lower().replace("_", "-")


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` to the table (its name and aliases must be new)."""
    if len(spec.default_scale) != len(spec.search_axes) or len(spec.default_step) != len(spec.search_axes):
        raise ValueError(f"method {spec.name!r}: default_scale and default_step need one value per "
                         f"search axis {spec.search_axes}")
    keys = {_key(spec.name), *(_key(a) for a in spec.aliases)}
    taken = sorted(k for k in keys if k in _ALIASES)
    if taken or spec.name.endswith(SSP_SUFFIX):
        raise ValueError(f"method {spec.name!r}: name(s) {taken or [spec.name]} already used or reserved")
    _REGISTRY[spec.name] = spec
    for k in keys:
        _ALIASES[k] = spec.name
    return spec


def get_method(name: str) -> MethodSpec:
    """The entry for ``name`` or one of its aliases (``"+ssp"`` not included: see :func:`parse_method`)."""
    canonical = _ALIASES.get(_key(name))
    if canonical is None:
        raise ValueError(f"unknown method {name!r}; choose from {list(_REGISTRY)}")
    return _REGISTRY[canonical]


def parse_method(name: str) -> tuple[MethodSpec, bool]:
    """``"ape+ssp"`` -> (the APE entry, True); ``"tip-adapter"`` -> (the Tip-Adapter entry, False)."""
    text = str(name)
    use_ssp = _key(text).endswith(SSP_SUFFIX)
    return get_method(text[: -len(SSP_SUFFIX)] if use_ssp else text), use_ssp


def registered_methods() -> tuple[MethodSpec, ...]:
    """The entries in registration order."""
    return tuple(_REGISTRY.values())


def method_names(*, fine_tuned: bool | None = None) -> tuple[str, ...]:
    """Every runnable method name, each followed by its ``+ssp`` variant; ``fine_tuned``
    filters (``None``: all)."""
    return tuple(n for s in _REGISTRY.values() if fine_tuned is None or s.fine_tuned == fine_tuned
                 for n in (s.name, s.name + SSP_SUFFIX))


def spec_for_estimator(estimator: Any) -> MethodSpec | None:
    """The entry of ``estimator``'s class, or of its nearest registered base class."""
    by_path = {s.estimator: s for s in _REGISTRY.values()}
    for cls in type(estimator).__mro__:
        spec = by_path.get(f"{cls.__module__}:{cls.__qualname__}")
        if spec is not None:
            return spec
    return None


# ------------------------------------------------------------------------------------ the table


def _init(section: str) -> ParamsFn:
    return lambda cfg, dim: dict(cfg[section]["init"])


def _ape_params(cfg: Mapping[str, Any], dim: int) -> dict:
    ape = cfg["ape"]
    # n_channels is passed as configured; APE clamps it to D, and the run records the value used
    return {**ape["init"], "n_channels": int(ape["n_channels"]),
            "criterion_weights": tuple(ape["criterion_weights"])}


register_method(MethodSpec(
    name="zero-shot", title="Zero-shot CLIP", estimator="ssp.classifiers:ZeroShotCLIP",
    aliases=("zs", "zeroshot", "zero-shot-clip", "zeroshotclip")))
register_method(MethodSpec(
    name="tip-adapter", title="Tip-Adapter", estimator="ssp.classifiers:TipAdapter",
    config_section="tip_adapter", search_section="tip_adapter", search_axes=("beta", "alpha"),
    default_scale=(7.0, 3.0), default_step=(200, 20), params=_init("tip_adapter"),
    aliases=("tip", "tipadapter")))
register_method(MethodSpec(
    name="ape", title="APE", estimator="ssp.classifiers:APE",
    config_section="ape", search_section="ape", search_axes=("beta", "alpha", "gamma"),
    default_scale=(7.0, 7.0, 1.0), default_step=(200, 20, 20), params=_ape_params))

# Fine-tuned adapters: constructor values from their own section (training settings), starting
# values of alpha / beta / gamma from the training-free section, search grid from it too.
_TRAINING_KEYS = ("epochs", "lr", "eps", "weight_decay", "batch_size")


def _training(cfg: Mapping[str, Any], section: str) -> dict:
    return {k: cfg[section][k] for k in _TRAINING_KEYS if k in cfg[section]}


def _tip_f_params(cfg: Mapping[str, Any], dim: int) -> dict:
    return {**cfg["tip_adapter"]["init"], **_training(cfg, "tip_adapter_f")}


def _ape_t_params(cfg: Mapping[str, Any], dim: int) -> dict:
    sec = cfg["ape_t"]
    return {**cfg["ape"]["init"], **_training(cfg, "ape_t"), "n_channels": int(sec["n_channels"]),
            "criterion_weights": tuple(sec["criterion_weights"])}


register_method(MethodSpec(
    name="tip-adapter-f", title="Tip-Adapter-F", estimator="ssp.finetuned:TipAdapterF",
    config_section="tip_adapter_f", search_section="tip_adapter", search_axes=("beta", "alpha"),
    default_scale=(7.0, 3.0), default_step=(200, 20), params=_tip_f_params, fine_tuned=True,
    aliases=("tip-f", "tipadapterf", "tip-adapter-finetuned")))
register_method(MethodSpec(
    name="ape-t", title="APE-T", estimator="ssp.finetuned:APET",
    config_section="ape_t", search_section="ape", search_axes=("beta", "alpha", "gamma"),
    default_scale=(7.0, 7.0, 1.0), default_step=(200, 20, 20), params=_ape_t_params, fine_tuned=True,
    aliases=("apet", "ape-trained")))
