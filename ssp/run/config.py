"""Experiment configuration: ``defaults.yaml`` < ``<dataset>.yaml`` < a user file < command line.

The YAML files live in the repository's top-level ``configs/``; ``ssp/configs`` links to it so they
ship inside the package.
"""
from __future__ import annotations

import copy
import difflib
import logging
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ssp._checks import ROUTINGS, SCORE_PRECISIONS, VAL_POLICIES, check_int
from ssp._utils.params import validate_params
from ssp.methods.registry import (canonical_name, load_method_modules, method_help, method_names, parse_method,
                                  registered_methods, split_ssp_suffix)

# every runnable method name (each with its "+ssp" variant), from the method registry
METHODS = method_names()  # the built-in methods (a config's method_modules may register more)


def _read_yaml(path: Path | Any) -> dict:
    try:
        text = path.read_text()
    except OSError as err:
        raise FileNotFoundError(f"cannot read config file {path}: {err}") from err
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"config file {where}: not valid YAML ({problem}); fix the file at that line") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping at top level, got {type(data).__name__}")
    return data


def merge(base: dict, override: dict) -> dict:
    """Recursive dict merge; ``override`` wins, ``None`` values in ``override`` are kept."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# keys a config may hold beyond those of defaults.yaml
_EXTRA_TOP_LEVEL = ("dataset",)
# keys whose value may be of another type than its default (checked by validate_config)
_FREE_TYPE = {"val_policy", "pretrained", "backbone"}


def _leaf_paths(schema: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in schema.items():
        path = f"{prefix}{key}"
        out.append(path)
        if isinstance(value, dict):
            out += _leaf_paths(value, path + ".")
    return out


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def check_keys(data: dict, schema: dict, where: str, prefix: str = "", *, root: dict | None = None) -> None:
    """Raise ``ValueError`` for a key of ``data`` that ``schema`` (defaults.yaml) does not have,
    naming its path and the nearest valid name, or for a value whose kind differs from the
    default's (a number where a list is expected, ...). ``where`` names the file."""
    root = schema if root is None else root
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in schema:
            if not prefix and key in _EXTRA_TOP_LEVEL:
                continue
            close = difflib.get_close_matches(str(key), [str(k) for k in schema], n=1, cutoff=0.6)
            if close:
                hint = f"did you mean '{prefix}{close[0]}'?"
            else:
                by_leaf: dict[str, list[str]] = {}
                for p in _leaf_paths(root):  # a leaf name may live in several sections (ape, ape_t)
                    by_leaf.setdefault(p.rsplit(".", 1)[-1], []).append(p)
                near = difflib.get_close_matches(str(key), list(by_leaf), n=1, cutoff=0.6)
                hint = ("did you mean " + " or ".join(f"'{p}'" for p in by_leaf[near[0]]) + "?" if near else
                        f"valid keys here: {', '.join(map(str, schema))}")
            raise ValueError(f"{where}: unknown config key '{path}'; {hint}")
        default = schema[key]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise ValueError(f"{where}: config key '{path}' must be a mapping (e.g. {default}), "
                                 f"got {value!r}")
            check_keys(value, default, where, path + ".", root=root)
        elif default is not None and key not in _FREE_TYPE and value is not None and _kind(value) != _kind(default):
            raise ValueError(f"{where}: config key '{path}' must be {_kind(default)} (e.g. {default!r}), "
                             f"got {value!r}")


def builtin_config_names() -> list[str]:
    """Dataset names that have a shipped YAML config."""
    root = resources.files("ssp") / "configs"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml") and p.name != "defaults.yaml")


def load_config(dataset: str, config_file: str | Path | None = None,
                overrides: dict | None = None) -> dict:
    """The merged configuration for ``dataset``.

    ``config_file`` (a user's YAML) is applied on top of the shipped dataset config, then
    ``overrides`` (e.g. from the command line, keys with value ``None`` ignored).
    """
    root = resources.files("ssp") / "configs"
    cfg = _read_yaml(root / "defaults.yaml")
    schema = copy.deepcopy(cfg)
    shipped = root / f"{dataset}.yaml"
    if shipped.is_file():
        data = _read_yaml(shipped)
        check_keys(data, schema, f"config file {shipped}")
        cfg = merge(cfg, data)
    if config_file is not None:
        data = _read_yaml(Path(config_file))
        _add_method_modules(data, schema, f"config file {config_file}")
        check_keys(data, schema, f"config file {config_file}")
        cfg = merge(cfg, data)
    cfg["dataset"] = dataset
    if overrides:
        data = {k: v for k, v in overrides.items() if v is not None}
        check_keys(data, schema, "overrides")
        cfg = merge(cfg, data)
    cfg["methods"] = canonical_methods(cfg.get("methods"))
    validate_config(cfg)
    return cfg


def _add_method_modules(data: dict, schema: dict, where: str) -> None:
    """Import the modules ``data['method_modules']`` names (methods defined outside ssp register
    on import) and accept their config sections, which ``defaults.yaml`` does not hold (their
    values are checked by the estimators' constraint tables)."""
    modules = data.get("method_modules") or []
    if not isinstance(modules, list):
        raise ValueError(f"{where}: config key 'method_modules' must be a list of module names, got {modules!r}")
    load_method_modules(modules, f"{where}: 'method_modules'")
    for spec in registered_methods():
        for section in (spec.config_section, spec.search_section):
            if section and section not in schema and isinstance(data.get(section), dict):
                schema[section] = copy.deepcopy(data[section])


def canonical_methods(methods: Any) -> Any:
    """A list of method names with each alias replaced by its canonical name (``lpp`` ->
    ``lp++``, ``lpp+ssp`` -> ``lp+++ssp``); unknown names and non-lists are returned as given,
    for :func:`validate_config` to refuse."""
    if not isinstance(methods, list):
        return methods
    out = []
    for m in methods:
        try:
            out.append(canonical_name(m) if isinstance(m, str) else m)
        except ValueError:
            out.append(m)
    return list(dict.fromkeys(out))


#: Config values a *run* refuses although the estimator accepts them: 0 training steps would report
#: a fine-tuned method's initialisation under its name.
RUN_MINIMUMS = {("lpp", "epochs"): 1, ("tip_adapter_f", "epochs"): 1, ("ape_t", "epochs"): 1}

#: Grid points per axis beyond which a configured search runs with a warning.
MAX_SEARCH_POINTS = 50

log = logging.getLogger(__name__)


def _check_run_values(cfg: dict, methods: list[str]) -> None:
    """:data:`RUN_MINIMUMS` refused; configured search grids beyond the sane range each method
    declares per axis (``SearchAxis.sane`` in its ``search_space``) warned about."""
    sections = {s for m in methods for s in (parse_method(m)[0].config_section, parse_method(m)[0].search_section)}
    for (section, key), minimum in RUN_MINIMUMS.items():
        value = (cfg.get(section) or {}).get(key)
        if section in sections and isinstance(value, int) and value < minimum:
            raise ValueError(f"config '{section}.{key}' must be >= {minimum} for a run, got {value}: "
                             f"{value} steps would report the untrained initialisation as the method")
    for spec in dict.fromkeys(parse_method(m)[0] for m in methods):
        section = (cfg.get(spec.search_section) or {}).get("search") if spec.search_section else None
        for axis, declared in getattr(spec.estimator, "search_space", {}).items():
            given = section.get(axis) if isinstance(section, dict) else None
            if not isinstance(given, (list, tuple)) or len(given) != 3:
                continue
            where = f"config '{spec.search_section}.search.{axis}' {list(given)}"
            sane = getattr(declared, "sane", None)
            out = [v for v in given[:2] if sane and _is_number(v) and not sane[0] <= v <= sane[1]]
            if out:
                log.warning("%s: %s is far outside %s's sane range [%g, %g] (one decade beyond the shipped "
                            "grid); such values only add search time", where, ", ".join(f"{v:g}" for v in out),
                            spec.name, *sane)
            if _is_number(given[2]) and given[2] > MAX_SEARCH_POINTS:
                log.warning("%s: %s points (over %d); the search time grows with each point", where, given[2],
                            MAX_SEARCH_POINTS)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate_config(cfg: dict) -> None:
    """Raise ``ValueError`` naming the offending key for values the pipeline cannot use."""
    prompts = cfg.get("prompts", "dataset")
    if not isinstance(prompts, str) or not prompts.strip():
        raise ValueError(f"config 'prompts' must be a prompt set name or a JSON file, got {prompts!r}")
    methods = cfg.get("methods")
    if not isinstance(methods, list) or not methods:
        raise ValueError(f"config 'methods' must be a non-empty list, got {methods!r}")
    load_method_modules(cfg.get("method_modules") or [])
    known = method_names()
    unknown = [m for m in methods if m not in known]
    if unknown:
        for m in unknown:   # a name that exists but cannot be (tda+ssp) says why
            base, use_ssp = split_ssp_suffix(m)
            if use_ssp and base in known:
                parse_method(m)
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(method_help())}")
    for key in ("shots", "seeds"):
        values = cfg.get(key)
        if not isinstance(values, list) or not values or not all(isinstance(v, int) for v in values):
            raise ValueError(f"config '{key}' must be a non-empty list of integers, got {values!r}")
    if any(k < 1 for k in cfg["shots"]):
        raise ValueError(f"shots must be >= 1, got {cfg['shots']}")
    check_int(cfg.get("views"), "config 'views'")
    if cfg.get("quick_gelu") not in (None, True, False):
        raise ValueError(f"config 'quick_gelu' must be null (auto), true or false, got {cfg['quick_gelu']!r}")
    policy = cfg.get("val_policy")
    if not (policy in VAL_POLICIES or (isinstance(policy, int) and policy >= 1)):
        raise ValueError(f"config 'val_policy' must be 'coop', 'full' or an integer >= 1, got {policy!r}")
    for spec in dict.fromkeys(parse_method(m)[0] for m in methods):
        if spec.config_section is not None and not isinstance(cfg.get(spec.config_section), dict):
            raise ValueError(f"method {spec.name!r} needs the config section '{spec.config_section}'")
        if spec.search_axes and spec.grid_builder is not None:
            spec.grid(cfg)  # the builder checks its own keys, naming the bad one
        elif spec.search_axes:
            sec = cfg.get(spec.search_section, {})
            n = len(spec.search_axes)
            for key in ("search_scale", "search_step"):
                if not isinstance(sec.get(key), list) or len(sec[key]) != n:
                    raise ValueError(f"config '{spec.search_section}.{key}' must be a list of {n} entries "
                                     f"({', '.join(spec.search_axes)}), got {sec.get(key)!r}")
            if not all(_is_number(v) and v > 0 for v in sec["search_scale"]):
                raise ValueError(f"config '{spec.search_section}.search_scale' must hold positive numbers, "
                                 f"got {sec['search_scale']!r}")
            if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sec["search_step"]):
                raise ValueError(f"config '{spec.search_section}.search_step' must hold positive integers, "
                                 f"got {sec['search_step']!r}")
        init = (cfg.get(spec.config_section) or {}).get("init") if spec.config_section else None
        for name, value in (init or {}).items():
            if not _is_number(value):
                raise ValueError(f"config '{spec.config_section}.init.{name}' must be a number, got {value!r}")
    for method in methods:
        _check_method_values(cfg, method)
    _check_run_values(cfg, methods)
    metrics = cfg.get("metrics") or {}
    alpha = metrics.get("conformal_alpha", 0.1)
    if not (_is_number(alpha) and 0 < alpha < 1):
        raise ValueError(f"config 'metrics.conformal_alpha' must be a number in (0, 1) (0.1: 90% coverage), got {alpha!r}")
    bins = metrics.get("calibration_bins", 15)
    if not (isinstance(bins, int) and not isinstance(bins, bool) and bins >= 1):
        raise ValueError(f"config 'metrics.calibration_bins' must be an integer >= 1, got {bins!r}")
    ssp_cfg = cfg.get("ssp", {})
    for key in ("rank", "routing"):
        if not isinstance(ssp_cfg.get(key), list) or not ssp_cfg[key]:
            raise ValueError(f"config 'ssp.{key}' must be a non-empty list (candidates searched on validation)")
    bad = [r for r in ssp_cfg["routing"] if r not in ROUTINGS]
    if bad:
        raise ValueError(f"config 'ssp.routing' has unknown routing(s) {bad}; use paper, vision, reference")
    if ssp_cfg.get("score_precision", "auto") not in SCORE_PRECISIONS:
        raise ValueError(f"config 'ssp.score_precision' must be one of {', '.join(SCORE_PRECISIONS)}, "
                         f"got {ssp_cfg['score_precision']!r}")


def _config_path(cfg: dict, sections: list[str], param: str) -> str:
    """Where ``param`` of a method comes from in the merged config (``ape.n_channels``)."""
    for sec in sections:
        section = cfg.get(sec) or {}
        if param in section:
            return f"{sec}.{param}"
        if param in (section.get("init") or {}):
            return f"{sec}.init.{param}"
    return param


def _check_method_values(cfg: dict, method: str) -> None:
    """Build ``method``'s estimator from ``cfg`` and run its parameter checks, so a bad value
    (``ape.n_channels: -5``) is refused before anything runs, naming its key path."""
    spec, _ = parse_method(method)
    sections = list(dict.fromkeys(s for s in (spec.config_section, spec.search_section) if s))
    names = [k for sec in sections for k in {**(cfg.get(sec) or {}), **((cfg.get(sec) or {}).get("init") or {})}]

    def refuse(err: Exception) -> ValueError:
        text = str(err)
        named = [k for k in names if re.search(rf"\b{re.escape(k)}\b", text)]
        key = _config_path(cfg, sections, max(named, key=len)) if named else " / ".join(sections)
        text = text.replace(f"{key} ", "", 1) if text.startswith(f"{key} ") else text
        return ValueError(f"config '{key}' (method {spec.name}): {text}")

    try:
        validate_params(spec.estimator(**spec.constructor_params(cfg, 1024)))
    except (TypeError, ValueError, KeyError) as err:
        raise refuse(err) from None
