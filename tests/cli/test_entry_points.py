"""Every command-line entry point is made by the one wrapper that decides how messages name
settings (flags, not Python arguments): nothing sniffs the process to guess it."""
from __future__ import annotations

import configparser
import importlib
from pathlib import Path

from ssp._checks import option
from ssp.cli._args import with_cli_messages

SETUP = Path(__file__).resolve().parents[2] / "setup.cfg"


def _entry_points() -> dict[str, str]:
    cfg = configparser.ConfigParser()
    cfg.read(SETUP)
    lines = [ln.strip() for ln in cfg["options.entry_points"]["console_scripts"].splitlines() if ln.strip()]
    return dict(tuple(part.strip() for part in ln.split("=", 1)) for ln in lines)


def test_every_console_script_main_is_made_by_the_cli_wrapper():
    scripts = _entry_points()
    assert {"ssp-fewshot", "ssp-reproduce", "ssp-unmix", "ssp-data"} <= set(scripts)
    wrapper_code = with_cli_messages(lambda argv=None: 0).__code__
    for name, target in scripts.items():
        module, attr = target.split(":")
        main = getattr(importlib.import_module(module), attr)
        assert main.__code__ is wrapper_code, f"{name} ({target}) is not made by ssp.cli._args.with_cli_messages"


def test_messages_name_flags_inside_a_cli_call_and_python_arguments_outside():
    seen = []
    main = with_cli_messages(lambda argv=None: seen.append(option("quick_gelu=True", "--quick-gelu on")) or 0)
    assert main([]) == 0 and seen == ["--quick-gelu on"]
    assert option("quick_gelu=True", "--quick-gelu on") == "quick_gelu=True"  # library use, even after a CLI call
