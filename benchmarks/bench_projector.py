"""Benchmark SSPProjector: time and peak memory, against a dense reference-style implementation.

Every case runs in a fresh subprocess, so its memory figures are its own. Peak memory per phase
is the process's peak resident set (VmHWM, reset before each phase through
``/proc/self/clear_refs``) and, on CUDA, ``torch.cuda.max_memory_allocated``. "extra" is the
peak minus the resident set before the phase (inputs already in memory).

Cases
-----
imagenet     SSPProjector at ImageNet scale: C=1000, K=16, L=49, D=1024, T=50,000 queries.
vit512       The same with D=512 (ViT-B/32-like): r = 481 > D/2, so the language view works
             with the orthogonal complements (31 directions per class).
vit512-basis The same, forced to the basis representation (481 directions per class).
small-ours   SSPProjector at C=100, T=5,000 (other sizes as above).
small-dense  The published code's formulation (the SSP script main_our.py) at the same size: full SVD per class,
             one D x D projector per class (a C x D x D stack) and a C x D x T tensor of
             projected queries; rank = numerical rank so that both compute the same thing.
ssp-ape-imagenet  SSP + APE end to end (:func:`bench_ssp_ape`) at the ImageNet size.
ssp-ape      SSP + APE end to end at the small size.
ssp-ape-dense  The published SSP + APE re-implemented densely in float32 at the small size
             (:class:`DenseSSPAPE`: C x D x D projectors, C x D x T projected queries, APE's
             cal_criterion with its four Python loops); the summary compares ssp-ape,
             ssp-ape-auto and ssp-ape-bf16 with it (time, peak memory above the inputs,
             differing predictions).
*-bf16       imagenet, small-ours, ssp-ape, ssp-ape-imagenet with ``score_precision="bfloat16"``
             (exact: screen, bound, float64 re-scoring); the plain cases run ``"float32"``,
             ssp-ape-auto runs ``"auto"``. The summary puts float32 and bfloat16 side by side:
             time, memory, and the number of queries whose top-kappa class set (and SSP + APE
             prediction) differs between the two.
kernel       The hardware: CPU flags (AMX / AVX512-BF16), oneDNN bf16 support, the candidates
             ``score_precision="auto"`` times, and float32 vs bfloat16 GEMM rates (GFLOP/s) on the
             language view's shape (a query chunk times a block of class bases).

Synthetic data with CLIP-like structure: class means with an anisotropic spectrum, global image
features = mean + noise, local features = image feature + stronger noise, text = mean + noise,
everything L2-normalised, float32 (as real feature caches are).

Usage::

    python benchmarks/bench_projector.py            # all cases (ImageNet scale takes minutes)
    python benchmarks/bench_projector.py --quick    # small smoke run (seconds)
    python benchmarks/bench_projector.py --device cuda --cases small-ours small-dense
    python benchmarks/bench_projector.py --cases kernel small-ours small-ours-bf16 small-dense ssp-ape ssp-ape-bf16
    python benchmarks/bench_projector.py --cases kernel ssp-ape ssp-ape-dense ssp-ape-auto   # the CPU ratio
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's ssp, not an installed one

SIZES = {
    "full": {
        "imagenet": dict(n_classes=1000, shots=16, n_patches=49, dim=1024, n_queries=50_000),
        "vit512": dict(n_classes=1000, shots=16, n_patches=49, dim=512, n_queries=50_000),
        "small": dict(n_classes=100, shots=16, n_patches=49, dim=1024, n_queries=5_000),
    },
    "quick": {
        "imagenet": dict(n_classes=60, shots=4, n_patches=16, dim=128, n_queries=3_000),
        "vit512": dict(n_classes=60, shots=4, n_patches=16, dim=64, n_queries=3_000),
        "small": dict(n_classes=20, shots=4, n_patches=16, dim=128, n_queries=500),
    },
}
CASES = ("kernel", "imagenet", "imagenet-bf16", "vit512", "vit512-basis", "ssp-ape-imagenet",
         "ssp-ape-imagenet-bf16", "small-ours", "small-ours-bf16", "small-dense", "ssp-ape", "ssp-ape-bf16",
         "ssp-ape-auto", "ssp-ape-dense")
PRECISION_OF_SUFFIX = {"-bf16": "bfloat16", "-tf32": "tfloat32", "-auto": "auto"}
SIZE_OF_CASE = {"imagenet": "imagenet", "imagenet-bf16": "imagenet", "vit512": "vit512",
                "vit512-basis": "vit512", "ssp-ape-imagenet": "imagenet", "ssp-ape-imagenet-bf16": "imagenet"}


# --------------------------------------------------------------------------------- data
def make_data(n_classes: int, shots: int, n_patches: int, dim: int, n_queries: int,
              seed: int = 0) -> dict[str, np.ndarray]:
    """Synthetic support set and queries (float32 numpy), generated in chunks."""
    gen = torch.Generator().manual_seed(seed)
    scale = torch.arange(1, dim + 1, dtype=torch.float32) ** -0.5  # anisotropic spectrum

    def noise(*shape: int) -> torch.Tensor:
        x = torch.randn(*shape, generator=gen) * scale
        return x / x.norm(dim=-1, keepdim=True)

    def unit(x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(dim=-1, keepdim=True)

    means = noise(n_classes, dim)
    labels = torch.arange(n_classes).repeat_interleave(shots)
    images = unit(means[labels] + 0.6 * noise(labels.numel(), dim))
    patches = np.empty((labels.numel(), n_patches, dim), dtype=np.float32)
    for i in range(0, labels.numel(), 256):
        g = images[i : i + 256]
        patches[i : i + 256] = unit(0.6 * g[:, None] + noise(g.shape[0], n_patches, dim)).numpy()
    text = unit(means + 0.4 * noise(n_classes, dim))
    query_labels = torch.randint(n_classes, (n_queries,), generator=gen)
    queries = np.empty((n_queries, dim), dtype=np.float32)
    for i in range(0, n_queries, 8192):
        q = query_labels[i : i + 8192]
        queries[i : i + 8192] = unit(means[q] + 0.6 * noise(q.numel(), dim)).numpy()
    return dict(patches=patches, labels=labels.numpy(), images=images.numpy(), text=text.numpy(),
                queries=queries, query_labels=query_labels.numpy())


# ------------------------------------------------------------------------------ measuring
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(name: str, fn: Callable[[], Any], device: torch.device, record: dict) -> Any:
    """Run ``fn`` once; store seconds, peak RSS and extra RSS (GB) under ``record[name]``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    before = _status_kb("VmRSS")
    resettable = _reset_peak()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = _status_kb("VmHWM")
    entry = dict(seconds=seconds, peak_rss_gb=peak / 2**20, extra_rss_gb=(peak - before) / 2**20,
                 peak_is_per_phase=resettable)
    if device.type == "cuda":
        entry["cuda_peak_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    record[name] = entry
    print(f"  [{name}] {seconds:.2f} s, peak RSS {entry['peak_rss_gb']:.2f} GB "
          f"(+{entry['extra_rss_gb']:.2f} GB)", file=sys.stderr, flush=True)
    return out


# ------------------------------------------------------------------------ implementations
def run_ours(data: dict, device: torch.device, record: dict, language_path: str = "auto",
             score_precision: str = "float32") -> dict[str, np.ndarray]:
    from ssp.methods.ssp.projector import SSPProjector

    proj = SSPProjector(device=device, score_precision=score_precision)
    proj._language_path = language_path  # private switch: force the basis representation
    proj._record_top = []  # private hook: keep the language view's top-kappa classes
    measure("fit", lambda: proj.fit(data["patches"], data["labels"], image_features=data["images"],
                                    text_features=data["text"]), device, record)
    vision = measure("transform vision", lambda: proj.transform(data["queries"], view="vision"),
                     device, record)
    language = measure("transform language", lambda: proj.transform(data["queries"], view="language"),
                       device, record)
    n_queries = len(data["queries"])
    record["info"] = dict(language_path=proj.language_path_, vision_rank=proj.vision_rank_,
                          class_rank_max=int(proj.class_ranks_.max()),
                          class_rank_min=int(proj.class_ranks_.min()),
                          score_precision_used=proj.score_precision_used_,
                          score_kernel=proj.score_kernel_, score_timings=proj.score_timings_,
                          rescored_classes_per_query=getattr(proj, "_rescored_pairs", 0) / n_queries,
                          boundary_ties=getattr(proj, "_scoring_stats", {}).get("ties", 0))
    top = torch.sort(torch.cat(proj._record_top), dim=1).values.numpy()
    return dict(vision=vision, language=language, text=proj.text_features_, top=top)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _numerical_rank(sigma: torch.Tensor, rows: int, dim: int) -> int:
    return int((sigma > max(rows, dim) * torch.finfo(sigma.dtype).eps * sigma[0]).sum())


class DenseSSP:
    """The published script's formulation (the SSP script main_our.py): class-major reshapes, full SVDs, a
    ``C x D x D`` projector stack and a ``C x D x T`` projected-query tensor. The rank is the
    numerical rank (not the script's 950) so that the result is comparable."""

    def __init__(self, top_k: int, lam: float, kappa: int) -> None:
        self.top_k, self.lam, self.kappa = top_k, lam, kappa

    def fit(self, patches, labels, images, text, device):
        n_classes, dim = text.shape
        shots = len(labels) // n_classes  # class-major, equal shots: the script's assumption
        z = _unit(torch.as_tensor(patches, device=device)).view(n_classes, shots, -1, dim)
        g = _unit(torch.as_tensor(images, device=device)).view(n_classes, shots, dim)
        w = _unit(torch.as_tensor(text, device=device))
        k = min(self.top_k, z.shape[2])
        rows_v, rows_l = [], []
        for c in range(n_classes):
            s_v = torch.einsum("kld,kd->kl", z[c], g[c]).topk(k, dim=1)
            kept = torch.gather(z[c], 1, s_v.indices[..., None].expand(-1, -1, dim))
            rows_v.append(torch.cat([s_v.values[..., None] * kept, self.lam * g[c][:, None]], 1)
                          .reshape(-1, dim).mean(0))
            s_l = torch.einsum("kld,d->kl", z[c], w[c]).topk(k, dim=1)
            kept = torch.gather(z[c], 1, s_l.indices[..., None].expand(-1, -1, dim))
            rows_l.append(torch.cat([(s_l.values[..., None] * kept).reshape(-1, dim),
                                     self.lam * w[c][None]]))
        from ssp.methods.ssp.parallel import lapack_threads

        m_v = torch.stack(rows_v)
        with lapack_threads(device):
            _, sigma, vh = torch.linalg.svd(m_v, full_matrices=True)
        r = _numerical_rank(sigma, n_classes, dim)
        self.p_vision = vh[:r].T @ vh[:r]
        stacked = torch.stack(rows_l)  # [C, R, D]
        with lapack_threads(device):
            _, sigma, vh = torch.linalg.svd(stacked, full_matrices=True)  # vh: [C, D, D]
        projectors = torch.empty(n_classes, dim, dim, device=device)
        for c in range(n_classes):
            r = _numerical_rank(sigma[c], stacked.shape[1], dim)
            projectors[c] = vh[c, :r].T @ vh[c, :r]
        self.p_class = projectors  # C x D x D
        self.text = _unit(torch.einsum("cde,ce->cd", projectors, w))
        return self

    def vision(self, x):
        return _unit(_unit(x) @ self.p_vision)

    def language(self, x):
        """Language view ``[T, D]`` and each query's margin between the kappa-th and the
        (kappa+1)-th class score (near 0: the top-kappa set is a near tie)."""
        projected = torch.einsum("cde,te->cdt", self.p_class, _unit(x))  # C x D x T
        scores = projected.norm(dim=1)  # [C, T]
        kappa = min(self.kappa, projected.shape[0])
        top = scores.topk(kappa, dim=0).indices  # [κ, T]
        picked = torch.gather(projected, 0, top[:, None, :].expand(-1, projected.shape[1], -1))
        ranked = scores.sort(dim=0, descending=True).values
        margin = ranked[kappa - 1] - ranked[kappa] if kappa < scores.shape[0] else torch.full_like(ranked[0], torch.inf)
        return _unit(picked.mean(0).T), margin


def run_dense(data: dict, device: torch.device, record: dict) -> dict[str, np.ndarray]:
    from ssp.methods.ssp.projector import SSPProjector

    params = SSPProjector().get_params()  # the same hyper-parameters as ours
    dense = DenseSSP(params["patch_top_k"], params["global_weight"], params["class_top_k"])
    measure("fit", lambda: dense.fit(data["patches"], data["labels"], data["images"], data["text"],
                                     device), device, record)
    x = torch.as_tensor(data["queries"], device=device)
    vision = measure("transform vision", lambda: dense.vision(x), device, record)
    language, margin = measure("transform language", lambda: dense.language(x), device, record)
    return dict(vision=vision.cpu().numpy(), language=language.cpu().numpy(),
                text=dense.text.cpu().numpy(), margin=margin.cpu().numpy())


class DenseSSPAPE:
    """SSP + APE as the published code computes them, in float32 (a dense re-implementation).

    Projector: :class:`DenseSSP` (full SVD per class, a ``C x D x D`` stack of projectors
    ``U U^T``, every query projected by every class projector: a ``C x D x T`` tensor). APE
    (training-free, the SSP script's pre-search logits): ``cal_criterion`` on the projected text
    and keys, i.e. the inter-class similarity of every channel summed over every pair of classes
    ``(i, j), i != j`` and every pair of their ``K + 1`` vectors (the published four Python loops,
    one ``D``-vector multiply-add per step), the class variance of the text, the top channels;
    then ``100 x^L W^T + alpha exp(-beta (1 - x^V_O K_O^T)) (Y * exp(gamma delta))`` with a dense
    one-hot ``Y``. Class-major support with equal shots (the published assumption).
    """

    def __init__(self, dense: DenseSSP, alpha=1.0, beta=1.0, gamma=0.1, n_channels=None,
                 weights=(0.5, 0.5)):
        self.dense, self.alpha, self.beta, self.gamma = dense, alpha, beta, gamma
        self.n_channels, self.weights = n_channels, weights

    def fit(self, images, labels, device):
        text = self.dense.text  # [C, D], projected and normalised
        n_classes, dim = text.shape
        keys = self.dense.vision(torch.as_tensor(images, device=device))  # [N, D]
        shots = keys.shape[0] // n_classes
        feats = torch.cat([text[:, None], keys.view(n_classes, shots, dim)], 1)  # [C, K+1, D]
        sim = torch.zeros(dim, device=device)
        for i in range(n_classes):  # cal_criterion as published: four loops, one vector per step
            for j in range(n_classes):
                if i == j:
                    continue
                for m in range(shots + 1):
                    for n in range(shots + 1):
                        sim += feats[i, m] * feats[j, n]
        sim /= n_classes * (n_classes - 1) * (shots + 1) ** 2
        criterion = -self.weights[0] * sim + self.weights[1] * text.var(0)
        q = dim if self.n_channels is None else min(self.n_channels, dim)
        self.channels = criterion.topk(q).indices
        self.keys = _unit(keys[:, self.channels])
        text_o = _unit(text[:, self.channels])
        one_hot = torch.nn.functional.one_hot(torch.as_tensor(labels, device=device), n_classes).float()
        probs = torch.softmax(self.keys @ text_o.T, dim=1)
        kl = (one_hot * torch.log2((one_hot + 1e-6) / (probs + 1e-6))).sum(1)
        self.values = one_hot * torch.exp(self.gamma * kl)[:, None]  # [N, C]
        return self

    def decision_function(self, queries):
        x_lang, _ = self.dense.language(queries)
        x_vis = self.dense.vision(queries)
        zero_shot = 100.0 * x_lang @ self.dense.text.T
        affinity = _unit(x_vis[:, self.channels]) @ self.keys.T
        return zero_shot + self.alpha * torch.exp(-self.beta * (1 - affinity)) @ self.values


def run_dense_ssp_ape(data: dict, device: torch.device, record: dict) -> dict[str, np.ndarray]:
    """:class:`DenseSSPAPE` end to end with the hyper-parameters of ours (``bench_ssp_ape``)."""
    from ssp.methods.cache_models import APE
    from ssp.methods.ssp.projector import SSPProjector

    params = SSPProjector().get_params()
    ape = APE().get_params()
    dense = DenseSSP(params["patch_top_k"], params["global_weight"], params["class_top_k"])
    measure("projector fit", lambda: dense.fit(data["patches"], data["labels"], data["images"],
                                               data["text"], device), device, record)
    model = DenseSSPAPE(dense, ape["alpha"], ape["beta"], ape["gamma"], ape["n_channels"],
                        tuple(ape["criterion_weights"]))
    measure("APE fit", lambda: model.fit(data["images"], data["labels"], device), device, record)
    x = torch.as_tensor(data["queries"], device=device)
    logits = measure("APE decision_function", lambda: model.decision_function(x), device, record)
    return dict(predictions=logits.argmax(1).cpu().numpy())


# ------------------------------------------------------------------------- SSP + APE hook
def bench_ssp_ape(patch_features, labels, image_features, text_features, queries, device,
                  record: dict, query_labels=None, score_precision: str = "auto") -> dict:
    """Time SSP + APE end to end: fit the projector, fit APE with it (channel criterion, projected
    keys and text), ``decision_function`` on every query (paper routing: both views).

    Returns ``record`` with one entry per phase; raises ImportError when
    ``ssp.methods.cache_models`` (APE) is not available.
    """
    from ssp.methods.cache_models import APE
    from ssp.methods.ssp.projector import SSPProjector

    proj = SSPProjector(device=device, score_precision=score_precision)
    measure("projector fit", lambda: proj.fit(patch_features, labels, image_features=image_features,
                                              text_features=text_features), device, record)
    ape = APE(projector=proj)  # already fitted: APE uses it as is
    measure("APE fit", lambda: ape.fit(image_features, labels, text_features=text_features),
            device, record)
    logits = measure("APE decision_function", lambda: ape.decision_function(queries), device, record)
    record["predictions"] = np.asarray(logits).argmax(1)
    stats = getattr(proj, "_scoring_stats", {})
    record["info"] = dict(score_precision_used=proj.score_precision_used_, score_kernel=proj.score_kernel_,
                          score_timings_ms_per_1k=proj.score_timings_,
                          rescored_pairs_per_query=stats.get("rescored_pairs", 0) / max(stats.get("queries", 0), 1),
                          boundary_ties=stats.get("ties", 0))
    if query_labels is not None:
        record["info"]["accuracy"] = float((record["predictions"] == query_labels).mean())
    return record


# ------------------------------------------------------------------------------- kernels
def bench_kernel(device: torch.device, dim: int = 1024, width: int = 481) -> dict:
    """Which kernels run: CPU flags, oneDNN bf16, the ``auto`` choice, GEMM rates (GFLOP/s) of
    a ``[t, D] x [D, classes * r]`` block (the language view's scoring GEMM)."""
    from ssp.methods.ssp.scoring import _SCREENS, _cpu_flags, _fast_bfloat16

    flags = _cpu_flags()
    info: dict[str, Any] = dict(
        cpu_flags=sorted(f for f in flags if "amx" in f or "bf16" in f or f in ("avx512f", "avx2")),
        torch_cpu_capability=torch.backends.cpu.get_cpu_capability(),
        mkldnn=torch.backends.mkldnn.is_available(),
        mkldnn_bf16=bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        native_bf16=_fast_bfloat16(device),
        auto_candidates=["float32", *(n for n, screen in _SCREENS.items() if screen.native(device))],
        threads=torch.get_num_threads(),
    )

    def rate(dtype: torch.dtype, rows: int, cols: int) -> float:
        x = torch.randn(rows, dim, device=device).to(dtype)
        w = torch.randn(dim, cols, device=device).to(dtype)
        torch.matmul(x, w)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        reps = 0
        while reps < 3 or time.perf_counter() - start < 0.5:
            torch.matmul(x, w)
            reps += 1
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if time.perf_counter() - start > 20:
                break
        return 2 * rows * dim * cols * reps / (time.perf_counter() - start) / 1e9

    big = (4096 if device.type == "cuda" else 1024, 32 * width)
    info["fp32_gflops"] = rate(torch.float32, *big)
    small = rate(torch.bfloat16, 64, 2 * width)  # probe: emulated bf16 can be 100x slower
    info["bf16_gflops"] = rate(torch.bfloat16, *big) if small > 0.2 * info["fp32_gflops"] else small
    info["bf16_shape"] = "[%d, %d] x [%d, %d]" % ((*big[:1], dim, big[1]) if small > 0.2 * info["fp32_gflops"]
                                                 else (64, dim, dim, 2 * width))
    info["fp32_shape"] = "[%d, %d] x [%d, %d]" % (big[0], dim, dim, big[1])
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        info["tf32_gflops"] = rate(torch.float32, *big)
        torch.backends.cuda.matmul.allow_tf32 = False
    return info


# ---------------------------------------------------------------------------------- driver
def worker(case: str, quick: bool, device_name: str | None, out_dir: Path) -> None:
    from ssp._utils.devices import resolve_device

    device = resolve_device(device_name)
    if case == "kernel":
        record = dict(case=case, device=str(device), load_avg=os.getloadavg()[0], phases={},
                      info=bench_kernel(device))
        (out_dir / f"{case}.json").write_text(json.dumps(record))
        return
    sizes = SIZES["quick" if quick else "full"][SIZE_OF_CASE.get(case, "small")]
    start = time.perf_counter()
    data = make_data(**sizes)
    record: dict[str, Any] = dict(case=case, sizes=sizes, device=str(device),
                                  data_seconds=time.perf_counter() - start,
                                  data_rss_gb=_status_kb("VmRSS") / 2**20,
                                  threads=torch.get_num_threads(), load_avg=os.getloadavg()[0])
    print(f"{case}: data ready ({record['data_rss_gb']:.2f} GB resident)", file=sys.stderr, flush=True)
    phases: dict[str, Any] = {}
    suffix = next((x for x in PRECISION_OF_SUFFIX if case.endswith(x)), "")
    precision = PRECISION_OF_SUFFIX.get(suffix, "float32")
    base = case.removesuffix(suffix) if suffix else case
    if base in ("imagenet", "vit512", "small-ours"):
        outputs = run_ours(data, device, phases, score_precision=precision)
    elif case == "vit512-basis":
        outputs = run_ours(data, device, phases, language_path="basis")
    elif case == "small-dense":
        outputs = run_dense(data, device, phases)
    elif case == "ssp-ape-dense":
        outputs = run_dense_ssp_ape(data, device, phases)
    else:
        outputs = {}
        try:
            bench_ssp_ape(data["patches"], data["labels"], data["images"], data["text"],
                          data["queries"], device, phases, query_labels=data["query_labels"],
                          score_precision=precision)
            outputs["predictions"] = phases.pop("predictions")
        except ImportError as err:
            record["skipped"] = f"ssp.methods.cache_models.APE not importable: {err}"
    record["phases"] = phases
    for key, value in outputs.items():
        value = np.asarray(value)
        np.save(out_dir / f"{case}-{key}.npy", value if value.dtype.kind == "i" else value.astype(np.float32))
    (out_dir / f"{case}.json").write_text(json.dumps(record))


def _stored_width(record: dict, dim: int) -> int:
    """Directions stored per class: r_max (bases) or D - r_min (complements)."""
    info = record["phases"]["info"]
    return info["class_rank_max"] if info["language_path"] == "basis" else dim - info["class_rank_min"]


def _pipeline(record: dict) -> tuple[float, float]:
    """Seconds over all phases and the peak resident set above the inputs (GB) of one case."""
    phases = [v for k, v in record["phases"].items() if k != "info"]
    return (sum(v["seconds"] for v in phases),
            max(v["peak_rss_gb"] for v in phases) - record["data_rss_gb"])


def _fmt(entry: dict) -> str:
    return f"{entry['seconds']:9.2f} s  {entry['peak_rss_gb']:6.2f} GB (+{entry['extra_rss_gb']:5.2f})"


def _row(label: str, ours: dict, dense: dict | None = None) -> str:
    def fmt(entry):
        return f"{entry['seconds']:9.2f} s  {entry['peak_rss_gb']:6.2f} GB (+{entry['extra_rss_gb']:5.2f})"

    line = f"  {label:<30} {fmt(ours)}"
    if dense is not None:
        line += f"   | {fmt(dense)}   x{dense['seconds'] / max(ours['seconds'], 1e-9):6.1f} time"
        line += f", x{dense['extra_rss_gb'] / max(ours['extra_rss_gb'], 1e-3):5.1f} extra mem"
    if "cuda_peak_gb" in ours:
        line += f"  cuda peak {ours['cuda_peak_gb']:.2f} GB"
    return line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: auto)")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--json", type=Path, help="also write all records to this file")
    parser.add_argument("--worker", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.quick, args.device, args.out_dir)
        return

    records: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(tmp)
        for case in args.cases:
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", case, "--out-dir", tmp]
            cmd += ["--quick"] if args.quick else []
            cmd += ["--device", args.device] if args.device else []
            result = subprocess.run(cmd)
            if result.returncode != 0:
                print(f"{case}: worker failed with exit code {result.returncode}", file=sys.stderr)
                continue
            records[case] = json.loads((out_dir / f"{case}.json").read_text())
        diffs: dict[str, Any] = {}
        if "small-ours" in records and "small-dense" in records:
            for key in ("vision", "language", "text"):
                a = np.load(out_dir / f"small-ours-{key}.npy")
                b = np.load(out_dir / f"small-dense-{key}.npy")
                per_row = np.abs(a - b).max(axis=1)
                diffs[key] = float(per_row.max())
                if key == "language":  # where do the two disagree? only on top-kappa near ties?
                    margin = np.load(out_dir / "small-dense-margin.npy")
                    differ = per_row > 1e-4
                    diffs["language_rows_over_1e-4"] = int(differ.sum())
                    diffs["language_max_margin_of_those"] = float(margin[differ].max()) if differ.any() else None
                    diffs["language_max_elsewhere"] = float(per_row[~differ].max()) if (~differ).any() else None
                    diffs["language_median_margin"] = float(np.median(margin))

        mixed: dict[str, dict] = {}
        for fp in ("small-ours", "imagenet", "ssp-ape", "ssp-ape-imagenet"):
            bf = fp + "-bf16"
            if fp not in records or bf not in records or "skipped" in records[fp] or "skipped" in records[bf]:
                continue
            key = "predictions" if "ape" in fp else "top"
            a, b = np.load(out_dir / f"{fp}-{key}.npy"), np.load(out_dir / f"{bf}-{key}.npy")
            differ = (a != b).reshape(len(a), -1).any(axis=1)
            mixed[fp] = dict(key=key, differ=int(differ.sum()), n=len(a))
            if key == "top":
                la, lb = np.load(out_dir / f"{fp}-language.npy"), np.load(out_dir / f"{bf}-language.npy")
                mixed[fp]["language_max_abs_diff"] = float(np.abs(la - lb).max())
        diffs["mixed_precision"] = mixed
        if "ssp-ape-dense" in records:
            ref = np.load(out_dir / "ssp-ape-dense-predictions.npy")
            diffs["vs_dense"] = {case: int((np.load(out_dir / f"{case}-predictions.npy") != ref).sum())
                                 for case in ("ssp-ape", "ssp-ape-auto", "ssp-ape-bf16")
                                 if (out_dir / f"{case}-predictions.npy").exists()}

    print("\nSSPProjector benchmark" + (" (--quick)" if args.quick else ""))
    if "kernel" in records:
        info = records["kernel"]["info"]
        print(f"\n[kernels] device={records['kernel']['device']} {info}")
    print(f"  machine: {os.cpu_count()} CPUs, torch {torch.__version__}; 1-min load average at "
          "the start of each case: " + ", ".join(f"{c} {r['load_avg']:.1f}" for c, r in records.items()))
    print("  times in seconds; memory = peak resident set of the phase (+ extra above the "
          "resident set before it)")
    for case in ("imagenet", "imagenet-bf16", "vit512", "vit512-basis"):
        if case not in records:
            continue
        rec = records[case]
        print(f"\n[ours, {case}] {rec['sizes']} device={rec['device']} threads={rec['threads']}")
        print(f"  inputs resident: {rec['data_rss_gb']:.2f} GB; {rec['phases'].get('info')}")
        for phase in ("fit", "transform vision", "transform language"):
            print(_row(phase, rec["phases"][phase]))
    if "imagenet" in records:
        sz = records["imagenet"]["sizes"]
        c, d, t = sz["n_classes"], sz["dim"], sz["n_queries"]
        print(f"\n  dense formulation at the ImageNet size would hold a C x D x D projector stack of "
              f"{c * d * d * 4 / 2**30:.1f} GiB and a C x D x T query tensor of {c * d * t * 4 / 2**30:.1f} GiB "
              f"(float32); the language view costs C*D*D*T = {c * d * d * t:.2e} multiply-adds there "
              f"vs ours C*w*D*T = {c * _stored_width(records['imagenet'], d) * d * t:.2e}")
    if "small-ours" in records:
        ours = records["small-ours"]
        dense = records.get("small-dense")
        print(f"\n[ours vs dense reference-style] {ours['sizes']} device={ours['device']}")
        print(f"  {'':<30} {'ours':>30}   | {'dense (C x D x D, C x D x T)':>30}   ratio dense/ours")
        for phase in ("fit", "transform vision", "transform language"):
            print(_row(phase, ours["phases"][phase], dense["phases"][phase] if dense else None))
        total_ours = sum(ours["phases"][p]["seconds"] for p in ("fit", "transform vision", "transform language"))
        if dense:
            total_dense = sum(dense["phases"][p]["seconds"] for p in ("fit", "transform vision", "transform language"))
            print(f"  total {total_ours:.2f} s vs {total_dense:.2f} s: x{total_dense / total_ours:.2f}")
        if diffs:
            print("  max |ours - dense|: " + ", ".join(f"{k} {diffs[k]:.2e}" for k in ("vision", "language", "text")))
            n_differ = diffs["language_rows_over_1e-4"]
            elsewhere = diffs["language_max_elsewhere"]
            print(f"  language rows differing by > 1e-4: {n_differ} of {ours['sizes']['n_queries']}"
                  + (f"; their kappa-th/(kappa+1)-th class score margin is at most "
                     f"{diffs['language_max_margin_of_those']:.1e} (median margin over all rows "
                     f"{diffs['language_median_margin']:.1e})" if n_differ else "")
                  + (f"; max difference on the other rows {elsewhere:.2e}" if elsewhere is not None else ""))
    for fp, entry in diffs.get("mixed_precision", {}).items():
        a, b = records[fp], records[fp + "-bf16"]
        print(f"\n[float32 vs bfloat16-exact scoring, same run] {fp} {a['sizes']} device={a['device']}")
        print(f"  bfloat16 side: {b['phases'].get('info')}")
        print(f"  {'':<30} {'float32':>30}   | {'bfloat16 + exact re-scoring':>30}   ratio f32/bf16")
        for phase, pa in a["phases"].items():
            if phase != "info" and phase in b["phases"]:
                pb = b["phases"][phase]
                print(f"  {phase:<30} {_fmt(pa)}   | {_fmt(pb)}   x{pa['seconds'] / max(pb['seconds'], 1e-9):5.2f}")
        what = "top-kappa class sets" if entry["key"] == "top" else "SSP + APE predictions"
        print(f"  queries whose {what} differ: {entry['differ']} of {entry['n']} (must be 0)"
              + (f"; max |language view difference| {entry['language_max_abs_diff']:.2e}"
                 if "language_max_abs_diff" in entry else ""))
    if "ssp-ape-dense" in records:
        dense = records["ssp-ape-dense"]
        t_dense, m_dense = _pipeline(dense)
        print(f"\n[SSP + APE: ours vs the published algorithm re-implemented densely in float32, same run] "
              f"{dense['sizes']} device={dense['device']} threads={dense['threads']}")
        print(f"  dense (C x D x D projectors, C x D x T projected queries, cal_criterion loops): "
              f"{t_dense:8.2f} s, peak +{m_dense:5.2f} GB over its inputs")
        for case in ("ssp-ape", "ssp-ape-auto", "ssp-ape-bf16"):
            if case not in records or "skipped" in records[case]:
                continue
            t_ours, m_ours = _pipeline(records[case])
            differ = diffs.get("vs_dense", {}).get(case)
            print(f"  ours {case:<13} {t_ours:8.2f} s, peak +{m_ours:5.2f} GB | x{t_dense / t_ours:5.1f} time, "
                  f"x{m_dense / max(m_ours, 1e-3):4.1f} less extra memory | predictions differing from dense: "
                  f"{differ} of {dense['sizes']['n_queries']} | {records[case]['phases'].get('info')}")
    for case in ("ssp-ape-imagenet", "ssp-ape-imagenet-bf16", "ssp-ape", "ssp-ape-bf16", "ssp-ape-auto",
                 "ssp-ape-dense"):
        if case not in records:
            continue
        rec = records[case]
        print(f"\n[SSP + APE end to end, {case}] {rec['sizes']} device={rec['device']}")
        if "skipped" in rec:
            print(f"  skipped: {rec['skipped']}")
        for phase, entry in rec["phases"].items():
            if phase != "info":
                print(_row(phase, entry))
        if "info" in rec["phases"]:
            print(f"  {rec['phases']['info']}")
    if args.json:
        args.json.write_text(json.dumps(dict(records=records, max_abs_diff=diffs), indent=2))


if __name__ == "__main__":
    main()
