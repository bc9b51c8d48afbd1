"""The method registry: one table that the CLI, the runner, the config checks and the search read.

Each method registers itself with a decorator beside its class, saying where its constructor
parameters and its search grid come from in the merged config::

    @register_method("tip-adapter", title="Tip-Adapter", config_section="tip_adapter", ...)
    class TipAdapter(...): ...

    spec = get_method("tip-adapter")          # aliases: "tip", "tip_adapter", "TipAdapter"
    model = spec.build(cfg, n_features=512, projector=None, device="cpu")
    grid = spec.grid(cfg)                    # {"beta": [...], "alpha": [...]} from cfg["tip_adapter"]

The table holds the classes. Reading it imports :mod:`ssp.methods` and every other module of
that package (a new method module needs no import anywhere), and a config's ``method_modules``
imports methods kept outside the package (:func:`load_method_modules`). Method modules import
torch lazily (:mod:`ssp._lazy`), so ``ssp-fewshot --help`` stays fast. Every method also runs with
an SSP projector: ``"<name>+ssp"`` (:func:`parse_method`). A new method is one module with a
decorated class, its config section (``configs/defaults.yaml``, the one home of every default:
:func:`default_config`) and its tests.
"""
from __future__ import annotations

import functools
import importlib
import math
import pkgutil
from importlib import resources
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ssp._checks import check_int

__all__ = ["MethodSpec", "register_method", "get_method", "parse_method", "split_ssp_suffix", "canonical_name",
           "method_names",
           "method_help", "registered_methods", "spec_for_estimator", "log_grid_builder", "make_grid",
           "default_config", "load_method_modules", "SSP_SUFFIX"]

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
        search_section: the config section holding its grid (``search_scale`` / ``search_step``,
            or ``search`` for a ``grid_builder``); without a config the section of the packaged
            ``configs/defaults.yaml`` (:func:`default_config`), the one home of every default grid.
        search_axes: hyper-parameters searched on validation, in search order (``()``: none).
        grid_start: the first value of each axis of :func:`make_grid`'s linear grids (``()``:
            0.1 on every axis, the reference grids' start).
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
        uses_prompts: ``fit`` also takes ``prompt_features`` ``[C, P, D]`` (each class's prompts
            encoded one by one) when the source has them (TIMO weighs them).
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
    params: ParamsFn | None = field(default=None, compare=False)
    fine_tuned: bool = False
    aliases: tuple[str, ...] = ()
    needs_text: bool = True
    grid_builder: Callable[[Any, Mapping[str, Any] | None], dict] | None = field(default=None, compare=False)
    uses_views: bool = False
    uses_prompts: bool = False
    test_time: bool = False
    grid_start: tuple[float, ...] = ()

    def linear_grid_start(self) -> tuple[float, ...]:
        """The first value of each axis of :func:`make_grid`'s grids (0.1 unless ``grid_start``)."""
        return tuple(self.grid_start) or (0.1,) * len(self.search_axes)

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
        the default config's otherwise; ``None`` when nothing is searched."""
        if not self.search_axes:
            return None
        section = (cfg or {}).get(self.search_section or "", None)
        if section is None:
            section = default_config().get(self.search_section or "")
        if self.grid_builder is not None:
            return self.grid_builder(self, section)
        if section is None:
            raise ValueError(f"method {self.name!r} has no grid: give its config section "
                             f"'{self.search_section}' search_scale and search_step")
        return make_grid(self.name, section["search_scale"], section["search_step"])


@functools.lru_cache(maxsize=1)
def _default_config_text() -> str:
    return (resources.files("ssp") / "configs" / "defaults.yaml").read_text(encoding="utf-8")


def default_config() -> dict:
    """The packaged ``configs/defaults.yaml`` (a fresh copy): the one source of every method's
    default grid and run settings (constructor defaults equal it; ``tests/methods/test_defaults.py``)."""
    import yaml

    return yaml.safe_load(_default_config_text())


def log_grid_builder(*axes: str) -> Callable[[Any, Mapping[str, Any] | None], dict]:
    """A ``grid_builder`` of log-spaced ``axes``: a config section gives each as ``search: {axis:
    [low, high, points]}`` (both ends included, ``low > 0``); an axis it leaves out takes the
    default config's value (:func:`default_config`)::

        gda:
          search: {alpha: [1.0e-4, 1.0e+4, 9]}     # 1e-4, 1e-3, ..., 1e4
    """

    def build(spec: Any, section: Mapping[str, Any] | None) -> dict:
        defaults = (default_config().get(spec.search_section) or {}).get("search") or {}
        defaults = {a: defaults.get(a) for a in axes}
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
    if spec.grid_builder is None and len(spec.linear_grid_start()) != len(spec.search_axes):
        raise ValueError(f"method {spec.name!r}: grid_start needs one value per search axis {spec.search_axes}")
    keys = {_key(spec.name), *(_key(a) for a in spec.aliases)}
    taken = sorted(k for k in keys if k in _ALIASES)
    if taken or spec.name.endswith(SSP_SUFFIX):
        raise ValueError(f"method {spec.name!r}: name(s) {taken or [spec.name]} already used or reserved")
    _REGISTRY[spec.name] = spec
    for k in keys:
        _ALIASES[k] = spec.name
    return spec


def _load() -> None:
    """Import every built-in method module (each registers itself): :mod:`ssp.methods` imports
    the shipped ones in table order, then every other module of the package (a new method
    module needs no import anywhere)."""
    package = importlib.import_module("ssp.methods")
    if not _DISCOVERED:
        _DISCOVERED.append(True)
        for info in pkgutil.iter_modules(package.__path__, "ssp.methods."):
            importlib.import_module(info.name)


_DISCOVERED: list[bool] = []


def load_method_modules(modules: Sequence[str], where: str = "config 'method_modules'") -> None:
    """Import each module of ``modules`` (dotted names on ``sys.path``): a method defined outside
    this package registers itself on import (``@register_method``). A module that cannot be
    imported is a one-line ``ValueError`` naming it."""
    for name in modules:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{where} must list module names (e.g. my_package.my_method), got {name!r}")
        try:
            importlib.import_module(name.strip())
        except ImportError as err:
            raise ValueError(f"{where}: cannot import {name!r} ({type(err).__name__}: {err}); "
                             "put the module's folder on PYTHONPATH") from None


def get_method(name: str) -> MethodSpec:
    """The entry for ``name`` or one of its aliases (``"+ssp"`` not included: see :func:`parse_method`)."""
    _load()
    canonical = _ALIASES.get(_key(name))
    if canonical is None:
        raise ValueError(f"unknown method {name!r}; choose from {list(_REGISTRY)}")
    return _REGISTRY[canonical]


def split_ssp_suffix(name: str) -> tuple[str, bool]:
    """``"ape+ssp"`` -> ``("ape", True)``; ``"ape"`` -> ``("ape", False)`` (no lookup)."""
    text = str(name)
    use_ssp = _key(text).endswith(SSP_SUFFIX)
    return (text[: -len(SSP_SUFFIX)] if use_ssp else text), use_ssp


def parse_method(name: str) -> tuple[MethodSpec, bool]:
    """``"ape+ssp"`` -> (the APE entry, True); ``"tip-adapter"`` -> (the Tip-Adapter entry, False)."""
    text = str(name)
    base, use_ssp = split_ssp_suffix(text)
    spec = get_method(base)
    if use_ssp and spec.test_time:
        raise ValueError(f"{text}: {spec.name} is a test-time method (no labelled image), and SSP's projector is "
                         f"fitted on labelled support patches, so nothing of SSP carries over; run {spec.name}")
    return spec, use_ssp


def canonical_name(name: str) -> str:
    """The name runs, tables and run files use for ``name``, an alias accepted everywhere a
    method is named (``--methods``, a config's ``methods``, ``ssp-reproduce``): ``"lpp"`` ->
    ``"lp++"``, ``"lpp+ssp"`` -> ``"lp+++ssp"``, ``"tip"`` -> ``"tip-adapter"``. Unknown names
    raise ``ValueError`` listing the choices."""
    try:
        get_method(split_ssp_suffix(name)[0])
    except ValueError:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(method_help())}") from None
    spec, use_ssp = parse_method(name)   # a name that exists but cannot be, says why
    return spec.name + (SSP_SUFFIX if use_ssp else "")


def method_help() -> list[str]:
    """Every method for a help text or an error, each followed by its ``+ssp`` variant; a name
    holding '+' also shows its plain alias: ``"lp++ (or lpp)"``, ``"lp+++ssp (or lpp+ssp)"``."""
    _load()
    out = []
    for s in _REGISTRY.values():
        plain = next((a for a in s.aliases if "+" in s.name and a.replace("-", "").isalnum()), None)
        out.append(f"{s.name} (or {plain})" if plain else s.name)
        if not s.test_time:
            out.append(f"{s.name}{SSP_SUFFIX} (or {plain}{SSP_SUFFIX})" if plain else s.name + SSP_SUFFIX)
    return out


def registered_methods() -> tuple[MethodSpec, ...]:
    """The entries in registration order."""
    _load()
    return tuple(_REGISTRY.values())


def method_names(*, fine_tuned: bool | None = None) -> tuple[str, ...]:
    """Every runnable method name, each followed by its ``+ssp`` variant (test-time methods have
    none); ``fine_tuned`` filters (``None``: all)."""
    _load()
    return tuple(n for s in _REGISTRY.values() if fine_tuned is None or s.fine_tuned == fine_tuned
                 for n in ((s.name,) if s.test_time else (s.name, s.name + SSP_SUFFIX)))


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

    ``v_i = a + i (s − a) / n`` for ``i = 0 .. n − 1`` on each axis, with the start ``a`` the
    method declares (``MethodSpec.grid_start``; 0.1 by default, 0 for APE's γ): e.g.
    ``β_i = 0.1 + i (s_β − 0.1) / n_β`` and ``γ_i = i s_γ / n_γ``. The upper bound ``s`` is never
    reached. Values are computed with the reference's float expression.

    Args:
        method: a registered method with searched axes ("tip-adapter", "ape", ...) or one of
            its registry aliases.
        search_scale: ``(s_β, s_α)`` or ``(s_β, s_α, s_γ)``; default: ``search_scale`` of the
            method's section in the default config (:func:`default_config`).
        search_step: ``(n_β, n_α)`` or ``(n_β, n_α, n_γ)``; default: its ``search_step``.

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
    section = default_config()[spec.search_section]
    scale = tuple(section["search_scale"] if search_scale is None else search_scale)
    step = tuple(section["search_step"] if search_step is None else search_step)
    if len(scale) != len(axes) or len(step) != len(axes):
        raise ValueError(
            f"{spec.name} needs {len(axes)} values ({', '.join(axes)}) in search_scale and "
            f"search_step, got {scale!r} and {step!r}"
        )
    grid = {}
    for axis, start, s, n in zip(axes, spec.linear_grid_start(), scale, step):
        s = float(s)
        if not math.isfinite(s) or s <= 0:
            raise ValueError(f"search_scale for {axis} must be a positive number, got {s}")
        n = check_int(n, f"search_step for {axis}")
        i = np.arange(int(n), dtype=np.float64)
        grid[axis] = i * (s - start) / int(n) + start  # start 0: exactly i s / n
    return grid
