"""Interruptions lose nothing: Ctrl-C / SIGTERM give a short message and exit 130 / 143 with no
temp file left; ``kill -9`` at many moments, then a rerun, gives the clean run's numbers exactly.

Real subprocesses of the CLI on a few real DTD images with a tiny random backbone (no mocking)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from _dtd_subset import dtd_subset
from safetensors import safe_open

from ssp.cli.fewshot import main

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _args(data_root: Path, split: Path | None, out: Path, cache: Path, *extra: str) -> list[str]:
    args = ["--dataset", "dtd", "--root", str(data_root / "coop"),
            "--backbone", str(REPO / "tests/assets/tiny-rn.json"), "--pretrained", "none", "--device", "cpu",
            "--views", "1", "--output", str(out), "--feature-store", str(cache), "--no-progress", *extra]
    return args + (["--split-file", str(split)] if split is not None else [])


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ssp.cli.fewshot", *args], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _count(folder: Path, pattern: str) -> int:
    return sum(1 for _ in folder.rglob(pattern)) if folder.is_dir() else 0


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 240.0) -> bool:
    """Poll ``condition()`` every 2 ms; False when the process ended (or timed out) first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.002)
    return False


def _temp_files(*folders: Path) -> list[Path]:
    return [p for f in folders if f.is_dir() for p in f.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_sigint_and_sigterm_during_extraction_are_short_and_clean(data_root, tmp_path):
    procs = {}
    for sig in (signal.SIGINT, signal.SIGTERM):  # both at once: the CPU time is the interpreters' start-up
        out, cache = tmp_path / f"{sig.name}/out", tmp_path / f"{sig.name}/cache"
        # the full DTD subset: its 360 test images take seconds to encode
        procs[sig] = (out, cache, _start(_args(data_root, None, out, cache, "--shots", "1", "--seeds", "1")))
    try:
        for sig, (out, cache, proc) in procs.items():
            assert _wait_for(lambda: _count(cache, "text_classifier/*.safetensors") == 1, proc), proc.communicate()
            time.sleep(0.3)  # now encoding the test images
            proc.send_signal(sig)
        results = {sig: proc.communicate(timeout=120) for sig, (_, _, proc) in procs.items()}
    finally:
        for _, _, proc in procs.values():
            proc.kill()
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        out, cache, proc = procs[sig]
        stderr = results[sig][1]
        assert proc.returncode == code, stderr[-2000:]
        last = stderr.strip().splitlines()[-1]
        assert last.startswith(f"ssp-fewshot: interrupted ({sig.name}); ") and "rerun" in last
        assert "0 run(s) finished in this call" in last  # stopped during extraction: no run yet
        assert "Traceback" not in stderr and len(stderr.splitlines()) < 15
        assert _temp_files(out, cache) == []        # clean-up ran
        assert not out.exists()                     # no run finished: nothing written there
        assert _count(cache, "features/**/*.safetensors") == 0  # the test features were not complete


@pytest.mark.skipif(not hasattr(os, "register_at_fork"), reason="needs os.fork")
def test_interrupt_swallowed_by_a_fork_hook_is_delivered_again():
    """A signal landing in an os.fork hook (DataLoader workers starting) is dropped by plain Python
    ("Exception ignored in ..."); the CLI delivers it again instead of running on."""
    from ssp.cli.fewshot import _Interrupted, _signals_as_interrupts

    state = {"armed": True}

    def hook():
        if state.pop("armed", False):
            os.kill(os.getpid(), signal.SIGTERM)
            sum(range(1000))  # the handler runs (and raises) inside the hook

    os.register_at_fork(after_in_parent=hook)
    with pytest.raises(_Interrupted) as err:
        with _signals_as_interrupts():
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
            time.sleep(5)  # interrupted long before this ends
    assert err.value.signum == signal.SIGTERM and "armed" not in state
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


KILL_POINTS = {  # name -> condition on (out, cache): kill as soon as it holds
    "text classifier written (encoding the test images)":
        lambda out, cache: _count(cache, "text_classifier/*.safetensors") >= 1,
    "a cache temp file exists (mid-write)": lambda out, cache: bool(_temp_files(cache)),
    "test features written (encoding val)": lambda out, cache: _count(cache, "features/**/*.safetensors") >= 1,
    "val features written (encoding the support)":
        lambda out, cache: _count(cache, "features/**/*.safetensors") >= 2,
    "first run JSON written": lambda out, cache: _count(out, "*.run.json") >= 1,
    "third run JSON written": lambda out, cache: _count(out, "*.run.json") >= 3,
    "results.md written (writing the plot)": lambda out, cache: (out / "results.md").is_file(),
}


def _runs(out: Path) -> dict[str, tuple[float, float]]:
    # relative paths: the run files of several methods share a file name
    return {str(p.relative_to(out)): (json.loads(p.read_text())["val_accuracy"],
                                      json.loads(p.read_text())["test_accuracy"])
            for p in out.rglob("*.run.json")}


def _check_complete(cache: Path, out: Path) -> None:
    """Every file a rerun could read is complete (temp files may remain: they are never read)."""
    for path in cache.rglob("*.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            assert f.metadata()["format"] == "ssp-feature-store"
            for name in f.keys():
                f.get_tensor(name)
    for path in out.rglob("*.json"):
        json.loads(path.read_text())


@pytest.mark.slow
def test_kill_9_at_many_moments_then_rerun_gives_the_clean_numbers(data_root, tmp_path, capsys):
    split = dtd_subset(data_root, tmp_path, train=4, val=2, test=6)
    extra = ("--shots", "1", "2", "--seeds", "1", "--methods", "zero-shot", "tip-adapter")
    assert main(_args(data_root, split, tmp_path / "clean/out", tmp_path / "clean/cache", *extra)) == 0
    clean = _runs(tmp_path / "clean/out")
    assert len(clean) == 4

    # all trials at once (each its own folders); a thread per trial kills at its moment
    trials = {}
    for i, (name, cond) in enumerate(KILL_POINTS.items()):
        out, cache = tmp_path / f"t{i}/out", tmp_path / f"t{i}/cache"
        trials[name] = (out, cache, cond, _start(_args(data_root, split, out, cache, *extra)))
    killed: dict[str, bool] = {}

    def watch(name: str) -> None:
        out, cache, cond, proc = trials[name]
        if _wait_for(lambda: cond(out, cache), proc) and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed[name] = True

    threads = [threading.Thread(target=watch, args=(name,)) for name in trials]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, (out, cache, cond, proc) in trials.items():
        proc.communicate(timeout=240)
        if killed.get(name):
            assert proc.returncode == -signal.SIGKILL
        else:  # the moment was missed (e.g. a temp file that lived < 2 ms): the run must have finished
            assert proc.returncode == 0, name

    assert len(killed) >= 5, f"only {sorted(killed)} were hit"
    for name, (out, cache, cond, proc) in trials.items():
        _check_complete(cache, out)
        assert main(_args(data_root, split, out, cache, *extra)) == 0, name  # the rerun
        assert _runs(out) == clean, name
    capsys.readouterr()
