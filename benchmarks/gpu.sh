#!/usr/bin/env bash
# One prepared GPU measurement of the SSP projector and of feature extraction (< 5 min on one GPU).
#
#   bash benchmarks/gpu.sh            # from anywhere; uses this checkout's ssp
#   SSP_GPU_SH_QUICK=1 bash benchmarks/gpu.sh   # smoke run at the benchmarks' --quick sizes
#
# CPU half (always): which kernels this CPU runs (AMX / AVX512-BF16 flags, what
#   score_precision="auto" picks, float32 vs bfloat16 GEMM GFLOP/s) and SSP + APE at C=100,
#   T=5,000 in float32 and bfloat16-exact scoring, with the count of differing predictions.
# GPU half (when CUDA is available): at the ImageNet size (C=1000, K=16, L=49, D=1024,
#   T=50,000) the projector fit, language / vision transforms and SSP + APE (APE fit +
#   decision_function) times and peak torch.cuda.max_memory_allocated in three modes:
#     fp32       score_precision="float32", TF32 off (the exact reference),
#     tf32       score_precision="float32", TF32 on for every float32 matmul (not exact: the
#                mismatch count says by how much),
#     bf16-exact score_precision="bfloat16" (bfloat16 scoring + exact re-scoring), TF32 off;
#   each with the number of queries whose top-kappa class set / SSP + APE prediction differs from
#   fp32's; then extraction images/s of RN50 and ViT-B/16 (random init) under fp16 and bf16
#   autocast. Without a GPU it prints that the GPU half is unmeasured.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
exec python3 - "$@" <<'PY'
import os, sys, time
from pathlib import Path

sys.path.insert(0, str(Path.cwd()))
sys.path.insert(0, str(Path.cwd() / "benchmarks"))
import numpy as np
import torch

from bench_projector import SIZES, bench_kernel, make_data
from ssp.classifiers import APE
from ssp.projector import SSPProjector

T0 = time.perf_counter()
SIZE = "quick" if os.environ.get("SSP_GPU_SH_QUICK") else "full"


def log(msg):
    print(f"[{time.perf_counter() - T0:6.1f} s] {msg}", flush=True)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def ssp_ape(data, device, precision, tf32=False):
    """Projector fit, transforms and SSP + APE on ``data``; times, CUDA peaks, selections."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    put = (lambda a: torch.as_tensor(a, device=device)) if device.type == "cuda" else (lambda a: a)
    patches, images, text, queries = (put(data[k]) for k in ("patches", "images", "text", "queries"))
    labels = put(data["labels"])
    if device.type == "cuda":
        inputs = torch.cuda.memory_allocated(device) - base
    out = {}
    proj = SSPProjector(device=device, score_precision=precision)
    proj._record_top = []
    _, out["fit"] = timed(lambda: proj.fit(patches, labels, image_features=images, text_features=text), device)
    _, out["language"] = timed(lambda: proj.transform(queries, view="language"), device)
    _, out["vision"] = timed(lambda: proj.transform(queries, view="vision"), device)
    top = torch.sort(torch.cat(proj._record_top), dim=1).values.numpy()
    proj._record_top = None
    ape = APE(projector=proj, device=device)
    _, out["APE fit"] = timed(lambda: ape.fit(images, labels, text_features=text), device)
    logits, out["APE logits"] = timed(lambda: ape.decision_function(queries), device)
    out["SSP+APE"] = out["fit"] + out["APE fit"] + out["APE logits"]
    pred = torch.as_tensor(logits).argmax(1).cpu().numpy()
    if device.type == "cuda":
        out["peak GiB above inputs"] = (torch.cuda.max_memory_allocated(device) - base - inputs) / 2**30
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    out["used"] = f"{proj.score_precision_used_}/{proj.score_kernel_}"
    out["rescored/query"] = getattr(proj, "_rescored_pairs", 0) / len(pred)
    return out, top, pred


def report(title, rows):
    keys = ["fit", "language", "vision", "APE fit", "APE logits", "SSP+APE", "peak GiB above inputs",
            "rescored/query", "top-k differ", "pred differ", "used"]
    print(f"\n{title}")
    print("  " + f"{'mode':<11}" + "".join(f"{k:>22}" for k in keys if any(k in r for r in rows.values())))
    for mode, r in rows.items():
        cells = []
        for k in keys:
            if not any(k in rr for rr in rows.values()):
                continue
            v = r.get(k, "")
            cells.append(f"{v:>22.2f}" if isinstance(v, float) else f"{v!s:>22}")
        print(f"  {mode:<11}" + "".join(cells))


def compare(rows, tops, preds, ref="fp32"):
    for mode in rows:
        rows[mode]["top-k differ"] = int((tops[mode] != tops[ref]).any(axis=1).sum())
        rows[mode]["pred differ"] = int((preds[mode] != preds[ref]).sum())


# ------------------------------------------------------------------------------ CPU half
cpu = torch.device("cpu")
log("CPU half: kernels")
print("  ", bench_kernel(cpu))
log("CPU half: SSP + APE, float32 vs bfloat16-exact (seconds; memory is not tracked on CPU here)")
small = make_data(**SIZES[SIZE]["small"])
rows, tops, preds = {}, {}, {}
for mode, precision in (("fp32", "float32"), ("bf16-exact", "bfloat16")):
    rows[mode], tops[mode], preds[mode] = ssp_ape(small, cpu, precision)
compare(rows, tops, preds)
report(f"CPU, {SIZES[SIZE]['small']} (bf16 is emulated where the CPU has no bf16 GEMMs)", rows)
del small

# ------------------------------------------------------------------------------ GPU half
if not torch.cuda.is_available():
    print("\nGPU half: UNMEASURED (no CUDA device on this machine). Run this script on a GPU "
          "machine for the ImageNet-size fp32 / tf32 / bf16-exact figures and extraction images/s.")
    sys.exit(0)

gpu = torch.device("cuda")
print(f"\nGPU: {torch.cuda.get_device_name(gpu)}, torch {torch.__version__}")
log("GPU half: kernels")
print("  ", bench_kernel(gpu))
log("GPU half: ImageNet-size data")
data = make_data(**SIZES[SIZE]["imagenet"])
rows, tops, preds = {}, {}, {}
for mode, precision, tf32 in (("fp32", "float32", False), ("tf32", "float32", True),
                              ("bf16-exact", "bfloat16", False)):
    log(f"GPU half: {mode}")
    rows[mode], tops[mode], preds[mode] = ssp_ape(data, gpu, precision, tf32)
compare(rows, tops, preds)
report(f"GPU, {SIZES[SIZE]['imagenet']} (seconds; GiB = peak torch.cuda.max_memory_allocated "
       "above the inputs on the GPU)", rows)
del data

log("GPU half: extraction (random init, batches of 256 random 224x224 images)")
from ssp.backbone import load_backbone

for name in ("RN50", "ViT-B-16"):
    backbone = load_backbone(name, pretrained=None, device=gpu, precision="fp32")
    batch = torch.randn(256, 3, 224, 224, device=gpu)
    line = []
    for dtype in (torch.float16, torch.bfloat16):
        with torch.autocast("cuda", dtype=dtype):
            backbone.encode_images(batch)  # warm-up
            _, seconds = timed(lambda: [backbone.encode_images(batch) for _ in range(8)], gpu)
        line.append(f"{str(dtype).split('.')[-1]} autocast {8 * 256 / seconds:8.0f} images/s")
    print(f"  {name:<9} D={backbone.n_features} L={backbone.n_patches}: " + ", ".join(line))
    del backbone
log("done")
PY
