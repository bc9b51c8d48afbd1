"""Rewrite the example outputs in README.md from real runs, so they cannot drift.

An example in README.md is a marker, a ```bash block with the command(s), and an output block::

    <!-- example: NAME [head=N] [tail=M] -->
    ```bash
    ssp-fewshot --dataset dtd ...
    ```
    ```text
    (replaced by this script)
    ```

Each command runs with ``bash -e`` in the repository root (``$SSP_DATA_ROOT`` and the relative
``../shared/data`` paths as the README shows them), and its output (standard output and error, as a terminal shows them) replaces
the output block (the repository's absolute path shown relative); an output between
``<!-- output -->`` and ``<!-- /output -->`` lines instead of a ```text block is Markdown that the
README shows rendered (a table); ``head`` / ``tail`` keep the
first / last lines with one ``...`` line between.
Output folders the commands name are removed first, so every example starts from nothing.

    python3 docs/readme_examples.py             # every example
    python3 docs/readme_examples.py --only demo # one
    python3 docs/readme_examples.py --list
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKER = re.compile(r"^<!-- example: (?P<name>[\w.-]+)(?P<opts>[^>]*)-->\n"
                    r"```bash\n(?P<command>.*?)```\n"
                    r"(?:```(?P<lang>text|console)\n(?P<output>.*?)```\n"
                    r"|<!-- output -->\n(?P<markdown>.*?)<!-- /output -->\n)", re.S | re.M)


@dataclass
class Example:
    name: str
    command: str
    output: str
    head: int | None
    tail: int | None
    span: tuple[int, int]   # of the output text inside README


def examples(text: str) -> list[Example]:
    out = []
    for m in MARKER.finditer(text):
        opts = dict(re.findall(r"(\w+)=(\d+)", m.group("opts")))
        group = "output" if m.group("output") is not None else "markdown"   # markdown: shown as written
        out.append(Example(m.group("name"), m.group("command"), m.group(group),
                           int(opts["head"]) if "head" in opts else None,
                           int(opts["tail"]) if "tail" in opts else None, m.span(group)))
    return out


def output_folders(command: str) -> list[str]:
    """The ``--output`` folders a command writes (removed before it runs)."""
    return re.findall(r"--(?:output|feature-store)\s+(\S+)", command)


def trim(text: str, head: int | None, tail: int | None) -> str:
    lines = text.rstrip("\n").splitlines()
    if head is None and tail is None:
        kept = lines
    else:
        h, t = head or 0, tail or 0
        kept = lines if len(lines) <= h + t + 1 else lines[:h] + ["..."] + (lines[-t:] if t else [])
    return "\n".join(kept) + "\n"


def run(example: Example) -> str:
    for folder in output_folders(example.command):
        shutil.rmtree(ROOT / folder, ignore_errors=True)
    start = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # standard output and error in the order a terminal shows
    done = subprocess.run(["bash", "-e", "-c", example.command], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"example {example.name!r} failed (exit {done.returncode}):\n{done.stdout[-3000:]}")
    print(f"{example.name}: {took:.1f} s", file=sys.stderr)
    text = done.stdout.replace(str(ROOT) + "/", "").replace(str(ROOT), ".")
    return trim(text, example.head, example.tail)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", help="names of the examples to run (default: all)")
    p.add_argument("--list", action="store_true", help="list the examples and exit")
    args = p.parse_args(argv)
    text = README.read_text()
    found = examples(text)
    if args.list:
        for ex in found:
            print(f"{ex.name}: {ex.command.strip()}")
        return 0
    chosen = [ex for ex in found if not args.only or ex.name in args.only]
    unknown = set(args.only or ()) - {ex.name for ex in found}
    if unknown:
        raise SystemExit(f"unknown example(s) {sorted(unknown)}; see --list")
    for ex in sorted(chosen, key=lambda e: e.span[0], reverse=True):   # from the end: spans stay valid
        new = run(ex)
        text = text[:ex.span[0]] + new + text[ex.span[1]:]
    tmp = README.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(README)
    return 0


if __name__ == "__main__":
    sys.exit(main())
