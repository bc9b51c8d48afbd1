"""One prepared measurement of SSP + APE per scoring mode, on the GPU when there is one (the
driver of ``benchmarks/gpu.sh``; < 5 minutes on one GPU).

CPU half (always): which kernels this CPU runs and SSP + APE at C=100, K=16, L=49, D=1024,
T=5,000 per scoring mode, with the resident-set peak above the inputs.
GPU half (when CUDA is available): the same at the ImageNet size (C=1000, T=50,000) with
``torch.cuda.max_memory_allocated`` above the inputs, then extraction images/s.

Modes: ``fp32`` (score_precision="float32", TF32 off: the reference), ``tf32`` (float32 with TF32
on for every float32 matmul: not exact, the mismatch count says by how much), ``bf16-exact`` /
``tf32-exact`` (a bfloat16 / TF32 screen, a rigorous bound, float64 re-scoring: must select
what exact arithmetic selects), ``auto`` (what ``score_precision="auto"`` measures and picks).
Columns: seconds per phase, peak memory above the inputs, re-scored (query, class) pairs per
query, queries whose kappa-th class tied (resolved towards the lower index), queries whose
top-kappa set / SSP + APE prediction differs from fp32's, and for those the float64 verdict:
how many the mode got right (fp32 rounding flipped a near tie) and how many it got wrong.

Hook: a module ``benchmarks/bench_gpu_extra.py`` defining ``imagenet_rows(data, device)`` ->
``{mode: {column: value}}`` adds its rows to the GPU table (e.g. GDA / ProKeR at the ImageNet
size); every row also lands in the JSON.

Usage::

    python benchmarks/bench_gpu.py --json gpu.json          # full sizes
    python benchmarks/bench_gpu.py --quick --json gpu.json  # smoke run (seconds)
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's ssp
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_projector import SIZES, _reset_peak, _status_kb, bench_kernel, make_data  # noqa: E402

from ssp.methods.cache_models import APE  # noqa: E402
from ssp.methods.ssp.projector import SSPProjector  # noqa: E402

T0 = time.perf_counter()
MODES = {  # name: (score_precision, TF32 on for float32 matmuls)
    "fp32": ("float32", False),
    "tf32": ("float32", True),
    "bf16-exact": ("bfloat16", False),
    "tf32-exact": ("tfloat32", False),
    "auto": ("auto", False),
}
COLUMNS = ["fit", "language", "vision", "APE fit", "APE logits", "SSP+APE", "peak GiB over inputs",
           "rescored/query", "ties", "top-k differ", "pred differ", "exact right", "exact wrong", "used"]


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f} s] {msg}", flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device):
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start


def _set_tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def ssp_ape(data: dict, device: torch.device, precision: str, tf32: bool = False):
    """Projector fit, both views, APE fit and logits on ``data``: times, memory, selections."""
    if device.type == "cuda":
        _set_tf32(tf32)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
    else:
        rss_before = _status_kb("VmRSS")
        _reset_peak()
    put = (lambda a: torch.as_tensor(a, device=device)) if device.type == "cuda" else (lambda a: a)
    patches, images, text, queries = (put(data[k]) for k in ("patches", "images", "text", "queries"))
    labels = put(data["labels"])
    if device.type == "cuda":
        inputs = torch.cuda.memory_allocated(device) - base
        torch.cuda.reset_peak_memory_stats(device)
    out: dict = {}
    proj = SSPProjector(device=device, score_precision=precision)
    proj._record_top = []
    _, out["fit"] = _timed(lambda: proj.fit(patches, labels, image_features=images, text_features=text), device)
    _, out["language"] = _timed(lambda: proj.transform(queries, view="language"), device)
    _, out["vision"] = _timed(lambda: proj.transform(queries, view="vision"), device)
    stats = dict(proj._scoring_stats)
    top = torch.sort(torch.cat(proj._record_top), dim=1).values.numpy()
    proj._record_top = None
    ape = APE(projector=proj, device=device)
    _, out["APE fit"] = _timed(lambda: ape.fit(images, labels, text_features=text), device)
    logits, out["APE logits"] = _timed(lambda: ape.decision_function(queries), device)
    out["SSP+APE"] = out["fit"] + out["APE fit"] + out["APE logits"]
    pred = torch.as_tensor(logits).argmax(1).cpu().numpy()
    if device.type == "cuda":
        out["peak GiB over inputs"] = (torch.cuda.max_memory_allocated(device) - base - inputs) / 2**30
        _set_tf32(False)
    else:
        out["peak GiB over inputs"] = (_status_kb("VmHWM") - rss_before) / 2**20
    out["used"] = f"{proj.score_precision_used_}/{proj.score_kernel_}"
    out["timings ms/1k"] = {k: round(v, 3) for k, v in proj.score_timings_.items()}
    out["rescored/query"] = stats["rescored_pairs"] / max(stats["queries"], 1)
    out["ties"] = stats["ties"]
    return out, top, pred, proj


def compare(rows: dict, tops: dict, preds: dict, proj, queries: np.ndarray, ref: str = "fp32") -> None:
    """Differences from ``ref`` and, for the differing queries, the float64 verdict."""
    factors = proj._language_factors.double()
    sign = -1.0 if proj.language_path_ == "complement" else 1.0
    kappa = tops[ref].shape[1]
    for mode in rows:
        differ = np.flatnonzero((tops[mode] != tops[ref]).any(axis=1))
        rows[mode]["top-k differ"] = int(differ.size)
        rows[mode]["pred differ"] = int((preds[mode] != preds[ref]).sum())
        right = wrong = 0
        if differ.size:  # float64 scores of every class for (at most 50 of) those queries
            x = torch.as_tensor(queries[differ[:50]], device=factors.device)
            x = (x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)).double()  # as the projector sees it
            scores = sign * torch.linalg.vector_norm(torch.einsum("cwd,qd->qcw", factors, x), dim=2).square()
            exact = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :kappa]
            exact = torch.sort(exact, dim=1).values.cpu().numpy()
            ok = (tops[mode][differ[:50]] == exact).all(axis=1)
            right, wrong = int(ok.sum()), int((~ok).sum())
        rows[mode]["exact right"], rows[mode]["exact wrong"] = right, wrong


def report(title: str, rows: dict) -> None:
    keys = [k for k in COLUMNS if any(k in r for r in rows.values())]
    print(f"\n{title}")
    width = {k: max(9, len(k) + 2, *(len(str(r.get(k, ""))) + 2 for r in rows.values()
                                     if not isinstance(r.get(k), float))) for k in keys}
    print("  " + f"{'mode':<11}" + "".join(f"{k:>{width[k]}}" for k in keys))
    for mode, r in rows.items():
        cells = []
        for k in keys:
            v = r.get(k, "")
            cells.append(f"{v:>{width[k]}.2f}" if isinstance(v, float) else f"{v!s:>{width[k]}}")
        print(f"  {mode:<11}" + "".join(cells))
    for mode, r in rows.items():
        if r.get("timings ms/1k"):
            print(f"  {mode}: auto calibration, ms per 1,000 queries: {r['timings ms/1k']}")


def run_modes(data: dict, device: torch.device, modes: list[str]) -> dict:
    """Every mode on ``data`` after one warm-up of every mode on a small problem (library
    loading, kernel selection and caching allocators would otherwise land on the first mode)."""
    warm = make_data(**SIZES["quick"]["small"])
    for mode in modes:
        ssp_ape(warm, device, *MODES[mode])
    rows, tops, preds = {}, {}, {}
    proj = None
    for mode in modes:
        log(f"{device.type}: {mode}")
        precision, tf32 = MODES[mode]
        rows[mode], tops[mode], preds[mode], p = ssp_ape(data, device, precision, tf32)
        proj = p if mode == "fp32" else proj
    compare(rows, tops, preds, proj, data["queries"])
    return rows


def extra_rows(data: dict, device: torch.device) -> dict:
    """Rows from ``benchmarks/bench_gpu_extra.py`` (GDA / ProKeR ...), when that module exists."""
    try:
        module = importlib.import_module("bench_gpu_extra")
    except ImportError:
        return {}
    return module.imagenet_rows(data, device)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the benchmarks' --quick sizes")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--skip-extraction", action="store_true")
    args = parser.parse_args(argv)
    size = "quick" if args.quick else "full"
    result: dict = dict(machine=dict(host=platform.node(), cpus=os.cpu_count(), torch=torch.__version__,
                                     threads=torch.get_num_threads(), load_avg=os.getloadavg()[0]),
                        sizes=SIZES[size])

    cpu = torch.device("cpu")
    log("CPU half: kernels")
    result["cpu_kernels"] = bench_kernel(cpu)
    print("  ", result["cpu_kernels"])
    small = make_data(**SIZES[size]["small"])
    rows = run_modes(small, cpu, ["fp32", "bf16-exact", "auto"])
    report(f"CPU ({os.cpu_count()} cores), {SIZES[size]['small']} (GiB = resident-set peak above the "
           "inputs; bf16 is emulated where the CPU has no bf16 GEMMs)", rows)
    result["cpu"] = rows
    del small

    if not torch.cuda.is_available():
        print("\nGPU half: UNMEASURED (no CUDA device on this machine). Run this script on a GPU "
              "machine for the ImageNet-size figures and extraction images/s.")
    else:
        gpu = torch.device("cuda")
        result["gpu_name"] = torch.cuda.get_device_name(gpu)
        print(f"\nGPU: {result['gpu_name']}, torch {torch.__version__}")
        result["gpu_kernels"] = bench_kernel(gpu)
        print("  ", result["gpu_kernels"])
        log("GPU half: ImageNet-size data")
        data = make_data(**SIZES[size]["imagenet"])
        rows = run_modes(data, gpu, list(MODES))
        rows.update(extra_rows(data, gpu))
        report(f"GPU, {SIZES[size]['imagenet']} (seconds; GiB = peak torch.cuda.max_memory_allocated "
               "above the inputs)", rows)
        result["gpu"] = rows
        del data
        if not args.skip_extraction:
            result["extraction"] = extraction(gpu)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
        print(f"\nfigures written to {args.json}")
    log("done")


def extraction(gpu: torch.device) -> dict:
    log("GPU half: extraction (random init, batches of 256 random 224x224 images)")
    from ssp.backbone import load_backbone

    out = {}
    for name in ("RN50", "ViT-B-16"):
        backbone = load_backbone(name, pretrained=None, device=gpu, precision="fp32")
        batch = torch.randn(256, 3, 224, 224, device=gpu)
        line = {}
        for dtype in (torch.float16, torch.bfloat16):
            with torch.autocast("cuda", dtype=dtype):
                backbone.encode_images(batch)  # warm-up
                _, seconds = _timed(lambda b=backbone: [b.encode_images(batch) for _ in range(8)], gpu)
            line[str(dtype).split(".")[-1]] = 8 * 256 / seconds
        print(f"  {name:<9}: " + ", ".join(f"{k} autocast {v:8.0f} images/s" for k, v in line.items()))
        out[name] = line
        del backbone
    return out


if __name__ == "__main__":
    main()
