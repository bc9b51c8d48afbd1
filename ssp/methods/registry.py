"""The method registry: one table that the CLI, the runner, the config checks and the search read.

Each method registers itself with a decorator beside its class, saying where its constructor
parameters and its search grid come from in the merged config::

    @register_method("tip-adapter", title="Tip-Adapter", config_section="tip_adapter", ...)
    class TipAdapter(...): ...

    spec = get_method("tip-adapter")          # aliases: "tip", "tip_adapter", "TipAdapter"
    model = spec.build(cfg, n_features=512, projector=None, device="cpu")
    grid = spec.grid(cfg)                    # {"beta": [...], "alpha": [...]} from cfg["tip_adapter"]

The table holds the classes. Reading it imports :mod:`ssp.methods` (every method module);
those modules import torch lazily (:mod:`ssp._lazy`), so ``ssp-fewshot --help`` stays fast.
Every method also runs with an SSP projector: ``"<name>+ssp"`` (:func:`parse_method`). A new
method is one module with a decorated class, its config section and its tests.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ssp._checks import check_int

__all__ = ["MethodSpec", "register_method", "get_method", "parse_method", "canonical_name", "method_names",
           "registered_methods", "spec_for_estimator", "log_grid_builder", "SSP_SUFFIX"]

SSP_SUFFIX = "+ssp"

# (section of the merged config, number of the estimator's features D) -> constructor kwargs
ParamsFn = Callable[[Mapping[str, Any], int], dict]


@dataclass(frozen=True)
class MethodSpec:
    """One method of the table.

    Attributes:
        name: canonical name used by the CLI, configs, run files and tables (``"tip-adapter"``).
        title: display name (``"Tip-Adapter"``).
        estimator: the estimator class.
        config_section: the config section its constructor parameters come from (``None``: none).
        search_section: the config section holding ``search_scale`` / ``search_step`` of its grid.
        search_axes: hyper-parameters searched on validation, in search order (``()``: none).
        default_scale, default_step: the grid used when no config gives one.
        params: ``(cfg, n_features) -> kwargs`` for the constructor (``None``: no parameters).
        fine_tuned: trained by gradient descent; ``fit`` also takes validation features (epoch
            selection) and the augmented views of the support set.
        aliases: other spellings accepted by :func:`get_method`.
        needs_text: its logits use the text classifier (runs without one are skipped).
        grid_builder: ``(spec, section or None) -> {axis: array}``; default: :func:`make_grid`'s
            linear grids from ``search_scale`` / ``search_step``. A method with a grid builder
            reads its own keys of ``search_section`` (and checks them, naming the bad key).
        uses_views: ``fit`` also takes ``view_features`` ``[E, N, D]`` (the augmented views of
            the support images), as the fine-tuned methods do.
        test_time: adapts while streaming over the test split, with no labelled support: runs
            under the test-time protocol only (``fit(text_features=...)``, then ``predict`` over the
            stream in order).
    """

    name: str
    title: str
    estimator: type
    config_section: str | None = None
    search_section: str | None = None
    search_axes: tuple[str, ...] = ()
    default_scale: tuple[float, ...] = ()
    default_step: tuple[int, ...] = ()
    params: ParamsFn | None = field(default=None, compare=False)
    fine_tuned: bool = False
    aliases: tuple[str, ...] = ()
    needs_text: bool = True
    grid_builder: Callable[[Any, Mapping[str, Any] | None], dict] | None = field(default=None, compare=False)
    uses_views: bool = False
    test_time: bool = False

    def constructor_params(self, cfg: Mapping[str, Any], n_features: int) -> dict:
        """Constructor keyword arguments from the merged config ``cfg`` for ``n_features`` = D."""
        return dict(self.params(cfg, n_features)) if self.params is not None else {}

    def build(self, cfg: Mapping[str, Any], *, n_features: int, projector: Any = None,
              device: Any = None, **extra: Any) -> Any:
        """A new, unfitted estimator configured from ``cfg`` (``extra`` overrides)."""
        kwargs = {**self.constructor_params(cfg, n_features), **extra}
        if self.test_time:  # no labelled support: nothing to fit SSP's projector on
            if projector is not None:
                raise ValueError(f"{self.name} is a test-time method and takes no projector (SSP is fitted "
                                 "on labelled support patches, which a test-time stream has none of)")
            return self.estimator(**kwargs, device=device)
        return self.estimator(**kwargs, projector=projector, device=device)

    def grid(self, cfg: Mapping[str, Any] | None = None) -> dict | None:
        """The search grid ``{axis: float64 array}``: from ``cfg[search_section]`` when given,
        the method's default grid otherwise; ``None`` when nothing is searched."""
        if not self.search_axes:
            return None
        section = (cfg or {}).get(self.search_section or "", None)
        if self.grid_builder is not None:
            return self.grid_builder(self, section)
        if section is None:
            return make_grid(self.name)
        return make_grid(self.name, section["search_scale"], section["search_step"])


def log_grid_builder(**defaults: tuple[float, float, int]) -> Callable[[Any, Mapping[str, Any] | None], dict]:
    """A ``grid_builder`` of log-spaced axes: ``axis=(low, high, points)`` are the defaults; a
    config section overrides them with ``search: {axis: [low, high, points]}`` (both ends
    included, ``low > 0``)::

        gda:
          search: {alpha: [1.0e-4, 1.0e+4, 9]}     # 1e-4, 1e-3, ..., 1e4
    """

    def build(spec: Any, section: Mapping[str, Any] | None) -> dict:
        import numpy as np

        given = (section or {}).get("search") or {}
        if not isinstance(given, Mapping):
            raise ValueError(f"config '{spec.search_section}.search' must map each axis to "
                             f"[low, high, points], got {given!r}")
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            raise ValueError(f"config '{spec.search_section}.search' has unknown axes {unknown}; "
                             f"{spec.name} searches {list(defaults)}")
        grid = {}
        for axis, default in defaults.items():
            value = given.get(axis, default)
            ok = (isinstance(value, (list, tuple)) and len(value) == 3
                  and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))
            if ok:
                low, high, points = float(value[0]), float(value[1]), value[2]
                ok = (isinstance(points, int) and points >= 1 and 0 < low <= high < float("inf")
                      and (points > 1 or low == high))
            if not ok:
                raise ValueError(f"config '{spec.search_section}.search.{axis}' must be [low, high, points] "
                                 f"with 0 < low <= high and an integer points >= 1, got {value!r}")
            grid[axis] = np.geomspace(low, high, points) if points > 1 else np.array([low])
        return grid

    return build


_REGISTRY: dict[str, MethodSpec] = {}
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    return str(name).strip().lower().replace("_", "-")


def register_method(name: str, **fields: Any) -> Callable[[type], type]:
    """Class decorator: add the decorated estimator to the table as ``name`` (``fields``: the
    other :class:`MethodSpec` attributes). Its name and aliases must be new."""

    def decorate(cls: type) -> type:
        _add(MethodSpec(name=name, estimator=cls, **fields))
        return cls

    return decorate


def _add(spec: MethodSpec) -> MethodSpec:
    linear = spec.grid_builder is None  # default_scale / default_step describe make_grid's linear grids
    if linear and (len(spec.default_scale) != len(spec.search_axes)
                   or len(spec.default_step) != len(spec.search_axes)):
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


def _load() -> None:
    """Import every built-in method module (each registers itself)."""
    importlib.import_module("ssp.methods")


def get_method(name: str) -> MethodSpec:
    """The entry for ``name`` or one of its aliases (``"+ssp"`` not included: see :func:`parse_method`)."""
    _load()
    canonical = _ALIASES.get(_key(name))
    if canonical is None:
        raise ValueError(f"unknown method {name!r}; choose from {list(_REGISTRY)}")
    return _REGISTRY[canonical]


def parse_method(name: str) -> tuple[MethodSpec, bool]:
    """``"ape+ssp"`` -> (the APE entry, True); ``"tip-adapter"`` -> (the Tip-Adapter entry, False)."""
    text = str(name)
    use_ssp = _key(text).endswith(SSP_SUFFIX)
    return get_method(text[: -len(SSP_SUFFIX)] if use_ssp else text), use_ssp


def canonical_name(name: str) -> str:
    """The name runs, tables and run files use for ``name``, an alias accepted everywhere a
    method is named (``--methods``, a config's ``methods``, ``ssp-reproduce``): ``"lpp"`` ->
    ``"lp++"``, ``"lpp+ssp"`` -> ``"lp+++ssp"``, ``"tip"`` -> ``"tip-adapter"``. Unknown names
    raise ``ValueError`` listing the choices."""
    try:
        spec, use_ssp = parse_method(name)
    except ValueError:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(method_help())}") from None
    return spec.name + (SSP_SUFFIX if use_ssp else "")


def method_help() -> list[str]:
    """Every method for a help text or an error, each followed by its ``+ssp`` variant; a name
    holding '+' also shows its plain alias: ``"lp++ (or lpp)"``, ``"lp+++ssp (or lpp+ssp)"``."""
    _load()
    out = []
    for s in _REGISTRY.values():
        plain = next((a for a in s.aliases if "+" in s.name and a.replace("-", "").isalnum()), None)
        out.append(f"{s.name} (or {plain})" if plain else s.name)
        out.append(f"{s.name}{SSP_SUFFIX} (or {plain}{SSP_SUFFIX})" if plain else s.name + SSP_SUFFIX)
    return out


def registered_methods() -> tuple[MethodSpec, ...]:
    """The entries in registration order."""
    _load()
    return tuple(_REGISTRY.values())


def method_names(*, fine_tuned: bool | None = None) -> tuple[str, ...]:
    """Every runnable method name, each followed by its ``+ssp`` variant; ``fine_tuned``
    filters (``None``: all)."""
    _load()
    return tuple(n for s in _REGISTRY.values() if fine_tuned is None or s.fine_tuned == fine_tuned
                 for n in (s.name, s.name + SSP_SUFFIX))


def spec_for_estimator(estimator: Any) -> MethodSpec | None:
    """The entry of ``estimator``'s class, or of its nearest registered base class."""
    _load()
    by_class = {s.estimator: s for s in _REGISTRY.values()}
    for cls in type(estimator).__mro__:
        spec = by_class.get(cls)
        if spec is not None:
            return spec
    return None


def make_grid(method: str, search_scale: Sequence[float] | None = None,
              search_step: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """The reference search grids of a registered method (the official Tip-Adapter and APE configs; docs/protocol.md).

    ``β_i = 0.1 + i (s_β − 0.1) / n_β`` and ``α_i = 0.1 + i (s_α − 0.1) / n_α`` for
    ``i = 0 .. n − 1`` and, for APE, ``γ_i = i s_γ / n_γ``: the upper bound ``s`` is never
    reached and γ starts at 0. Values are computed with the reference's float expression.

    Args:
        method: a registered method with searched axes ("tip-adapter", "ape", ...) or one of
            its registry aliases.
        search_scale: ``(s_β, s_α)`` or ``(s_β, s_α, s_γ)``; default: the method's
            ``default_scale`` in the registry.
        search_step: ``(n_β, n_α)`` or ``(n_β, n_α, n_γ)``; default: its ``default_step``.

    Returns:
        ``{"beta": [n_β], "alpha": [n_α](, "gamma": [n_γ])}`` float64 arrays.
    """
    spec = get_method(method)
    axes = spec.search_axes
    if not axes:
        raise ValueError(f"method {spec.name!r} has no hyper-parameters to search")
    if spec.grid_builder is not None:
        if search_scale is not None or search_step is not None:
            raise ValueError(f"{spec.name} builds its own grid (log-spaced); pass grid={{axis: values}} "
                             f"to validation_search or set '{spec.search_section}.search' in the config")
        return spec.grid_builder(spec, None)
    scale = tuple(spec.default_scale if search_scale is None else search_scale)
    step = tuple(spec.default_step if search_step is None else search_step)
    if len(scale) != len(axes) or len(step) != len(axes):
        raise ValueError(
            f"{spec.name} needs {len(axes)} values ({', '.join(axes)}) in search_scale and "
            f"search_step, got {scale!r} and {step!r}"
        )
    grid = {}
    for axis, s, n in zip(axes, scale, step):
        s = float(s)
        if not math.isfinite(s) or s <= 0:
            raise ValueError(f"search_scale for {axis} must be a positive number, got {s}")
        n = check_int(n, f"search_step for {axis}")
        i = np.arange(int(n), dtype=np.float64)
        grid[axis] = i * s / int(n) if axis == "gamma" else i * (s - 0.1) / int(n) + 0.1
    return grid
