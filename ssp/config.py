"""Experiment configuration: ``defaults.yaml`` < ``<dataset>.yaml`` < a user file < command line.

The YAML files live in the repository's top-level ``configs/``; ``ssp/configs`` links to it so they
ship inside the package.
"""
from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ._checks import ROUTINGS, VAL_POLICIES, check_int
from .registry import method_names, parse_method

# every runnable method name (each with its "+ssp" variant), from the method registry
METHODS = method_names()


def _read_yaml(path: Path | Any) -> dict:
    try:
        text = path.read_text()
    except OSError as err:
        raise FileNotFoundError(f"cannot read config file {path}: {err}") from err
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"config file {path} is not valid YAML: {err}") from err
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
    shipped = root / f"{dataset}.yaml"
    if shipped.is_file():
        cfg = merge(cfg, _read_yaml(shipped))
    if config_file is not None:
        cfg = merge(cfg, _read_yaml(Path(config_file)))
    cfg["dataset"] = dataset
    if overrides:
        cfg = merge(cfg, {k: v for k, v in overrides.items() if v is not None})
    validate_config(cfg)
    return cfg


def validate_config(cfg: dict) -> None:
    """Raise ``ValueError`` naming the offending key for values the pipeline cannot use."""
    methods = cfg.get("methods")
    if not isinstance(methods, list) or not methods:
        raise ValueError(f"config 'methods' must be a non-empty list, got {methods!r}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
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
        if spec.search_axes:
            sec = cfg.get(spec.search_section, {})
            n = len(spec.search_axes)
            for key in ("search_scale", "search_step"):
                if not isinstance(sec.get(key), list) or len(sec[key]) != n:
                    raise ValueError(f"config '{spec.search_section}.{key}' must have {n} entries "
                                     f"({', '.join(spec.search_axes)}), got {sec.get(key)!r}")
    ssp_cfg = cfg.get("ssp", {})
    for key in ("rank", "routing"):
        if not isinstance(ssp_cfg.get(key), list) or not ssp_cfg[key]:
            raise ValueError(f"config 'ssp.{key}' must be a non-empty list (candidates searched on validation)")
    bad = [r for r in ssp_cfg["routing"] if r not in ROUTINGS]
    if bad:
        raise ValueError(f"config 'ssp.routing' has unknown routing(s) {bad}; use paper, vision, reference")
