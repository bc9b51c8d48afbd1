"""Exact class scoring for the SSP projector's language view.

Per query, the energy of its projection onto every class's language subspace decides the top-κ
classes (:func:`select_classes`). Scoring every class is a ``[T, C·r] x D`` product; a TF32 or
bfloat16 *screen* computes it faster with a rigorous per-class, per-query bound on its rounding
error (:class:`_LowPrecisionScores`), and the classes the bound cannot rule out are re-scored in
float64, so the selected classes equal the exact ones (ties: the lower class index).
``score_precision="auto"`` times float32 and the screens the device runs natively and keeps the
fastest (:func:`choose_scoring`; remembered per device and size). Per-class work is split over
threads on CPU (:func:`split_classes`).
"""
from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator

from ssp._lazy import torch
from ssp.methods.ssp.parallel import (
    BLOCK_BUDGET_BYTES,
    PER_CLASS_DEVICES,
    class_groups,
    class_ranges,
    lapack_threads,
    split_classes,
)

# Budget for one [chunk, classes, r] coefficient block while scoring the language view: small
# enough to stay cache-friendly and to never hold all C classes' coefficients at once.
_SCORE_BLOCK_BYTES = 64 * 2**20


# ------------------------------------------------------------------ exact low-precision scoring
_BF16_UNIT = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits, round to nearest)


_TF32_UNIT = 2.0**-11  # TF32: 11 significant bits


_F32_UNIT = 2.0**-24


_F64_UNIT = 2.0**-53


# Queries per probe of the auto calibration (support features stand in for queries).
_PROBE_ROWS = {"cuda": 2048, "cpu": 128}


# In-memory calibration results: (device, threads, working dtype, C, w, D, kappa) -> timings.
_CALIBRATION: dict[tuple, dict[str, float]] = {}


_CALIBRATION_ENV = "SSP_SCORE_CALIBRATION"  # "1": also keep them in the user cache dir; a path: there


def _round_tf32(a: torch.Tensor) -> torch.Tensor:
    """float32 values rounded to nearest (ties to even) to TF32's 10 fraction bits, as float32.

    A TF32 tensor-core GEMM on these values rounds nothing on input (whatever its own input
    rounding), and their products are exact in float32 (11 + 11 significant bits)."""
    bits = a.contiguous().view(torch.int32)
    bits = (bits + (0x0FFF + ((bits >> 13) & 1))).bitwise_and_(-8192)  # clear the low 13 bits
    return bits.view(torch.float32)


@dataclass(frozen=True)
class _Screen:
    """A low-precision format for the first scoring pass: how operands are rounded and stored."""

    name: str
    unit: float

    def round(self, a: torch.Tensor) -> torch.Tensor:
        return a.to(torch.bfloat16) if self.name == "bfloat16" else _round_tf32(a.float())

    def native(self, device: torch.device) -> bool:
        """Whether ``device`` runs this format's GEMMs natively (faster than float32)."""
        if self.name == "bfloat16":
            return _fast_bfloat16(device)
        return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


_SCREENS = {
    "bfloat16": _Screen("bfloat16", _BF16_UNIT),
    "tfloat32": _Screen("tfloat32", _TF32_UNIT),
}


def _resolve_score_precision(
    requested: str, device: torch.device, dtype: torch.dtype, measure: Any = None
) -> str:
    """``score_precision`` -> what runs: a screen's name or the working precision's name.

    ``"auto"`` measures (``measure(candidates)`` -> seconds per candidate) among the working
    precision and the screens this device runs natively; emulated screens are never candidates.
    Without a native screen, or for float64 data, it is the working precision without timing.
    """
    working = "float64" if dtype == torch.float64 else "float32"
    if requested == "float32":
        return working
    if requested != "auto":
        return requested
    candidates = [name for name, screen in _SCREENS.items() if screen.native(device)]
    if dtype == torch.float64 or not candidates or measure is None:
        return working
    timings = measure([working, *candidates])
    return min(timings, key=timings.get)


def _fast_bfloat16(device: torch.device) -> bool:
    """Whether bfloat16 GEMMs run natively on ``device`` (CUDA with bfloat16 support, CPUs with
    AMX-BF16 / AVX512-BF16); elsewhere they are emulated and slow."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    return bool(_cpu_flags() & {"amx_bf16", "avx512_bf16"})


def _cpu_flags() -> set[str]:
    """CPU feature flags from ``/proc/cpuinfo`` (empty where it is unavailable)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _device_key(device: torch.device) -> str:
    """A name for the hardware behind ``device`` (calibration cache key)."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return f"cpu:{model or 'unknown'}:{torch.get_num_threads()} threads"


def _calibration_file() -> Any:
    """Where calibrations persist (``None``: memory only). Opt-in via ``SSP_SCORE_CALIBRATION``."""
    import os
    from pathlib import Path

    value = os.environ.get(_CALIBRATION_ENV, "")
    if value in ("", "0"):
        return None
    if value != "1":
        return Path(value)
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "ssp" / "score_precision.json"


def _load_calibration(key: tuple) -> dict[str, float] | None:
    if key in _CALIBRATION:
        return _CALIBRATION[key]
    path = _calibration_file()
    if path is None or not path.is_file():
        return None
    import json

    try:
        stored = json.loads(path.read_text()).get(repr(key))
    except (OSError, ValueError):
        return None
    if isinstance(stored, dict):
        _CALIBRATION[key] = {str(k): float(v) for k, v in stored.items()}
    return _CALIBRATION.get(key)


def _store_calibration(key: tuple, timings: dict[str, float]) -> None:
    _CALIBRATION[key] = dict(timings)
    path = _calibration_file()
    if path is None:
        return
    import json

    from ssp._io import write_text_atomic

    try:
        stored = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        stored = {}
    stored[repr(key)] = timings
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(stored, indent=1, sort_keys=True))
    except OSError:
        pass  # a read-only cache dir: memory only


@contextlib.contextmanager
def _matmul_mode(device: torch.device, tf32: bool = False) -> Iterator[None]:
    """GEMMs accumulate in float32 and float32 GEMMs are true float32 (``tf32=False``) or TF32
    (``tf32=True``) inside; cuBLAS may otherwise reduce split-K partial sums in bfloat16 or run
    float32 GEMMs in TF32, which the error bound of :class:`_LowPrecisionScores` does not cover."""
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    flags = (matmul.allow_bf16_reduced_precision_reduction, matmul.allow_tf32)
    matmul.allow_bf16_reduced_precision_reduction = False
    matmul.allow_tf32 = tf32
    try:
        yield
    finally:
        matmul.allow_bf16_reduced_precision_reduction, matmul.allow_tf32 = flags


def _gamma(n: int, unit: float) -> float:
    """``gamma_n = n u / (1 - n u)``: bound on the relative error of any n-term float sum."""
    return n * unit / (1.0 - n * unit)


_MM_OUT_DTYPE: dict[str, bool] = {}


def _mm_float32_out(device: torch.device) -> bool:
    """Whether ``torch.mm(bf16, bf16, out_dtype=torch.float32)`` works on ``device`` (CUDA in
    recent torch): float32 coefficients, no bfloat16 rounding of the output."""
    if device.type not in _MM_OUT_DTYPE:
        try:
            a = torch.ones(2, 2, dtype=torch.bfloat16, device=device)
            _MM_OUT_DTYPE[device.type] = torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
        except (TypeError, RuntimeError, NotImplementedError):
            _MM_OUT_DTYPE[device.type] = False
    return _MM_OUT_DTYPE[device.type]


@dataclass
class _LowPrecisionScores:
    """Low-precision copy of the class factors and the per-class constants of its error bound.

    ``operand`` is ``F~ = round(F)`` as ``[D, C w]`` contiguous (the GEMM's ``[K, N]`` operand,
    arranged once at fit time) in bfloat16, or for TF32 a ``[D, C w]`` view of the float32
    factors that each block's GEMM rounds on the fly (no second copy); ``native``: the device runs that format's
    GEMMs natively (else float32 GEMMs on the rounded values: same exact products, same float32
    sums, no speed-up); ``out_unit``: rounding unit of the GEMM's output (``2^-8`` where a
    bfloat16 GEMM returns bfloat16, else 0); ``rho`` ``>= ||F~_c - F_c||_2`` (the actual rounding
    of each class's factor), ``norm`` ``>= ||F_c||_2``, ``fro_low`` ``= ||F~_c||_F``, each ``[C]``
    in float64.
    """

    screen: _Screen
    operand: torch.Tensor
    native: bool
    out_unit: float
    rho: torch.Tensor
    norm: torch.Tensor
    fro_low: torch.Tensor

    @classmethod
    def build(cls, factors: torch.Tensor, screen: _Screen) -> "_LowPrecisionScores":
        n_classes, width, dim = factors.shape
        device = factors.device
        stored = screen.name == "bfloat16"  # TF32 rounds each block on the fly: no second copy
        if stored:
            operand = torch.empty(dim, n_classes * width, dtype=torch.bfloat16, device=device)
        else:
            operand = factors.reshape(n_classes * width, dim).T  # a view
        rho, norm, fro_low = (torch.empty(n_classes, dtype=torch.float64, device=device) for _ in range(3))
        per_class = 4 * factors.element_size() * (2 * width * dim + 2 * width * width)
        step = int(max(1, min(n_classes, BLOCK_BUDGET_BYTES // max(per_class, 1))))  # width 0: no rows
        for c0 in range(0, n_classes, step):
            c1 = min(n_classes, c0 + step)
            block = factors[c0:c1]
            low = screen.round(block)
            if stored:
                operand[:, c0 * width : c1 * width] = low.reshape(-1, dim).T
            low = low.to(block.dtype)
            error = low - block  # exact: the rounding error of a float32 number fits a float32
            rho[c0:c1] = _spectral_norm_bound(error, shift=None)
            valid = (block.abs().amax(dim=2) > 0).to(block.dtype)  # zero padding rows stay out
            norm[c0:c1] = (1.0 + _spectral_norm_bound(block, shift=valid)).sqrt()
            fro_low[c0:c1] = torch.linalg.vector_norm(low.double(), dim=(1, 2))
        native = screen.native(device)
        out_unit = 0.0
        if screen.name == "bfloat16" and native and not _mm_float32_out(device):
            out_unit = _BF16_UNIT
        return cls(screen, operand, native, out_unit, rho, norm, fro_low)

    @classmethod
    def bare(cls, factors: torch.Tensor, screen: _Screen) -> "_LowPrecisionScores":
        """The rounded operand alone, without the bound's constants (to time the GEMM)."""
        n_classes, width, dim = factors.shape
        flat = factors.reshape(n_classes * width, dim)
        operand = screen.round(flat).T.contiguous() if screen.name == "bfloat16" else flat.T
        none = torch.zeros(n_classes, dtype=torch.float64, device=factors.device)
        native = screen.native(factors.device)
        out_unit = _BF16_UNIT if screen.name == "bfloat16" and native and not _mm_float32_out(factors.device) else 0.0
        return cls(screen, operand, native, out_unit, none, none, none)

    def energies(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Screened energies ``[t, C]`` (float32) of unit queries ``x`` ``[t, D]`` and the rounded
        queries ``x~`` ``[t, D]`` (working dtype) they used."""
        x_low = self.screen.round(x)
        n_classes = self.rho.shape[0]
        width = self.operand.shape[1] // max(n_classes, 1)
        if self.native and self.screen.name == "bfloat16" and self.out_unit == 0.0:
            mm = lambda a, b, out: torch.mm(a, b, out_dtype=torch.float32)  # noqa: E731
            energy = _class_energies(x_low, self.operand, width, n_classes, out_dtype=torch.float32, mm=mm)
        elif self.screen.name == "tfloat32":  # the view of the factors, rounded block by block
            mm = lambda a, b, out: torch.matmul(a, _round_tf32(b), out=out)  # noqa: E731
            with _matmul_mode(x.device, tf32=True):
                energy = _class_energies(x_low, self.operand, width, n_classes, out_dtype=torch.float32, mm=mm)
        else:
            compute = None if self.native else torch.float32  # emulated: float32 GEMMs
            with _matmul_mode(x.device):
                energy = _class_energies(x_low, self.operand, width, n_classes,
                                         out_dtype=torch.float32, compute_dtype=compute)
        return energy, x_low.to(x.dtype)

    def energy_bound(
        self, energy: torch.Tensor, x_low_norm: torch.Tensor, x_diff_norm: torch.Tensor
    ) -> torch.Tensor:
        """Bound ``beta`` ``[t, C]`` with ``|energy - E| <= beta``, ``E = ||F_c x||^2`` exactly.

        ``energy`` ``[t, C]`` from the screened GEMM; ``x_low_norm``, ``x_diff_norm`` ``[t]`` are
        ``||x~||`` and ``||x~ - x||``. With ``a = F x`` and ``a~`` the screened coefficients
        (exact products, float32 accumulation over ``D`` terms, output rounded with ``out_unit``):

        ``||a~ - a|| <= delta = rho ||x~|| + ||F|| ||x~ - x|| + gamma_D ||F~||_F ||x~||
        + out_unit ||a~|| / (1 - out_unit)``, so ``| ||a~||^2 - ||a||^2 | <= delta (2 ||a~|| +
        delta)``; the float32 squared norm of ``a~`` adds ``(w + 2) u`` relative. ``rho`` is the
        spectral norm of this class's actual rounding error, ``||x~ - x||`` this query's. Every
        evaluation of the bound itself is rounded up by a relative ``1e-3`` (its own rounding is
        ``<= (D + w + 2) 2^-24``).
        """
        n_classes = self.rho.shape[0]
        width = self.operand.shape[1] // max(n_classes, 1)
        dim = self.operand.shape[0]
        bits = _F32_UNIT * (width + 2)  # rounding of the float32 squared norm of a~
        safety = 1.0 + 1e-3
        e = energy.clamp_min(0)
        a_low = (e / (1.0 - bits)).sqrt()  # >= ||a~||
        x_low_norm = x_low_norm[:, None] * safety
        delta = (
            self.rho.to(e.dtype) * x_low_norm
            + self.norm.to(e.dtype) * (x_diff_norm[:, None] * safety)
            + _gamma(dim, _F32_UNIT) * self.fro_low.to(e.dtype) * x_low_norm
            + self.out_unit / (1.0 - self.out_unit) * a_low
        ) * safety
        return (bits * a_low.square() + delta * (2 * a_low + delta)) * safety


def _spectral_norm_bound(a: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
    """Rigorous upper bounds ``[c]`` (float64) on ``||A_i||_2`` (``shift=None``) or on
    ``||A_i A_i^T - diag(shift_i)||_2`` (``shift`` ``[c, w]``), ``a`` ``[c, w, D]``.

    ``G = fl(A A^T) - diag(shift)`` is within ``gamma_D ||A||_F^2`` of the exact one (spectral
    norm); for symmetric ``G``, ``||G||_2^2 = ||G^2||_2 <= ||G^2||_F`` and ``fl(G G)`` is within
    ``gamma_w ||G||_F^2`` of ``G^2`` in the Frobenius norm.
    """
    n, width, dim = a.shape
    unit = torch.finfo(a.dtype).eps / 2
    fro_sq = torch.linalg.vector_norm(a.double(), dim=(1, 2)).square()
    gram = torch.bmm(a, a.mT)
    if shift is not None:
        gram.diagonal(dim1=1, dim2=2).sub_(shift)
    gram_fro_sq = torch.linalg.vector_norm(gram.double(), dim=(1, 2)).square()
    square = torch.bmm(gram, gram)
    square_fro = torch.linalg.vector_norm(square.double(), dim=(1, 2))
    g_norm = (square_fro + _gamma(width, unit) * gram_fro_sq).sqrt()
    bound = (g_norm + _gamma(dim, unit) * fro_sq) * (1.0 + 1e-6)
    return bound if shift is not None else bound.sqrt()


def _top_classes(scores: torch.Tensor, kappa: int, tol: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``[t, kappa]`` of the ``kappa`` largest scores per row and the rows ``[n]`` where
    the ``kappa``-th score ties (within ``tol``) with a score outside the selection.

    Tied scores are resolved towards the lower class index (``topk`` alone leaves that order
    unspecified): on a tied row, scores within ``tol`` of the ``kappa``-th count as equal to it.
    """
    top = scores.topk(kappa, dim=1)
    if kappa == scores.shape[1]:
        return top.indices, top.indices.new_empty(0)
    kth = top.values[:, -1:]
    tied = ((scores >= kth - tol).sum(1) > kappa).nonzero().flatten()
    indices = top.indices
    if tied.numel():
        rows, level = scores[tied], kth[tied]
        rows = torch.where((rows - level).abs() <= tol, level, rows)
        indices = indices.clone()
        indices[tied] = torch.sort(rows, dim=1, descending=True, stable=True).indices[:, :kappa]
    return indices, tied


def select_classes(
    x: torch.Tensor,
    factors: torch.Tensor,
    low: "_LowPrecisionScores | None",
    kappa: int,
    complement: bool,
) -> tuple[torch.Tensor, int, int]:
    """Top-``kappa`` classes ``[t, kappa]`` of unit queries ``x`` ``[t, D]``, the number of
    (query, class) pairs re-scored exactly, and the number of queries tied at the boundary.

    A class's score is its energy ``||B_c x||^2`` (basis) or ``-||B_perp x||^2`` (complement:
    the same order as ``||x||^2 - ||B_perp x||^2``). Without a screen (``low=None``) the scores
    are the working precision's. With one: screened energies of every class and a rigorous
    per-class, per-query bound ``beta`` on their error (:meth:`_LowPrecisionScores.energy_bound`);
    only the classes whose interval ``[s - beta, s + beta]`` reaches the ``kappa``-th largest
    lower end can be in the top ``kappa``, and those are re-scored in float64
    (:func:`_pair_energies`). The result is then the top ``kappa`` of the exact scores; scores
    equal to within float64 rounding count as a tie, resolved towards the lower class index
    (as :func:`_top_classes` resolves exact ties of the working-precision scores).
    """
    n_classes, width, dim = factors.shape
    if low is None:
        energy = _class_energies(x, factors.reshape(n_classes * width, dim).T, width, n_classes)
        top, tied = _top_classes(energy.neg_() if complement else energy, kappa)
        return top, 0, int(tied.numel())
    energy, x_round = low.energies(x)
    bound = low.energy_bound(
        energy,
        torch.linalg.vector_norm(x_round, dim=1),
        torch.linalg.vector_norm(x_round - x, dim=1),  # exact difference, rounded norm
    )
    approx = energy.neg_() if complement else energy
    threshold = (approx - bound).topk(kappa, dim=1).values[:, -1:]  # kappa-th lower end
    query, cls = ((approx + bound) >= threshold).nonzero(as_tuple=True)
    del approx, bound, energy
    exact = _pair_energies(x, query, cls, factors)
    exact = exact.neg_() if complement else exact
    scores = torch.full((x.shape[0], n_classes), float("-inf"), dtype=torch.float64, device=x.device)
    scores[query, cls] = exact
    # float64 rounding of an energy <= ||x||^2 (factors with orthonormal rows): (D + w + 2) u
    tol = 2.0 * (dim + width + 2) * _F64_UNIT * float(torch.linalg.vector_norm(x, dim=1).max()) ** 2
    top, tied = _top_classes(scores, kappa, tol=tol)
    return top, int(query.numel()), int(tied.numel())


def choose_scoring(
    requested: str,
    factors: torch.Tensor,
    probe: torch.Tensor,
    kappa: int,
    complement: bool,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[str, "_LowPrecisionScores | None", dict[str, float]]:
    """What the language view's class selection runs: ``(name, screen or None, timings)``.

    ``"auto"`` times the class selection of ``probe`` (unit support features, standing in for
    queries) with every native candidate, remembered per device and problem size; ``timings``
    holds seconds per 1,000 queries (empty when nothing was measured).
    """
    built: dict[str, _LowPrecisionScores] = {}

    def screen_for(name: str) -> "_LowPrecisionScores | None":
        if name not in _SCREENS:
            return None
        if name not in built:
            with _matmul_mode(device):
                built[name] = _LowPrecisionScores.build(factors, _SCREENS[name])
        return built[name]

    n_classes, width, dim = factors.shape
    key = (_device_key(device), str(dtype), n_classes, width, dim, kappa, complement)
    timings: dict[str, float] = {}

    def seconds(fn: Any) -> float:
        best = float("inf")
        for _ in range(2):  # the first run warms up kernels and allocator
            _synchronize(device)
            start = time.perf_counter()
            fn()
            _synchronize(device)
            best = min(best, time.perf_counter() - start)
        return best

    def measure(candidates: list[str]) -> dict[str, float]:
        cached = _load_calibration(key)
        if cached is not None and set(candidates) <= set(cached):
            timings.update(cached)
            return {name: cached[name] for name in candidates}
        rows = _PROBE_ROWS.get(device.type, 256)
        x = probe.repeat((rows + probe.shape[0] - 1) // probe.shape[0], 1)[:rows]
        for name in candidates:
            if name in _SCREENS:
                # a screen costs at least its GEMM: where that alone is no faster than the whole
                # working-precision selection, its bound is not worth building (its time here is
                # that of the GEMM alone, a lower bound)
                gemm = seconds(lambda: _LowPrecisionScores.bare(factors, _SCREENS[name]).energies(x))
                if gemm >= min(timings.values(), default=float("inf")) * rows / 1000.0:
                    timings[name] = 1000.0 * gemm / rows
                    continue
            low = screen_for(name)
            timings[name] = 1000.0 * seconds(lambda: select_classes(x, factors, low, kappa, complement)) / rows
        _store_calibration(key, timings)
        return dict(timings)

    name = _resolve_score_precision(requested, device, dtype, measure)
    return name, screen_for(name), timings


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _class_energies(
    x: torch.Tensor,
    operand: torch.Tensor,
    width: int,
    n_classes: int,
    out_dtype: torch.dtype | None = None,
    compute_dtype: torch.dtype | None = None,
    mm: Any = None,
) -> torch.Tensor:
    """Energy of each query in every one of ``n_classes`` classes: ``[t, D]`` x ``[D, C w]`` -> ``[t, C]``.

    ``energy[i, c] = ||F_c x_i||^2`` from GEMMs over blocks of classes (``_SCORE_BLOCK_BYTES``
    of coefficients at a time, one reused buffer), squared norms taken in ``out_dtype``.
    ``compute_dtype``: run the GEMMs on operands cast to it (float32 for bfloat16 operands on
    hardware without bfloat16 GEMMs: the same exact products and float32 sums). ``mm(a, b, out)``
    replaces ``torch.matmul(a, b, out=out)`` (it may return a new tensor of another dtype).
    """
    if compute_dtype is not None and compute_dtype != x.dtype:
        x = x.to(compute_dtype)
    t, dim = x.shape
    out_dtype = out_dtype or x.dtype
    if width == 0:  # every class spans the whole space: no complement directions, zero energy
        return torch.zeros(t, n_classes, dtype=out_dtype, device=x.device)
    energy = torch.empty(t, n_classes, dtype=out_dtype, device=x.device)
    step = int(max(1, min(n_classes, _SCORE_BLOCK_BYTES // max(1, t * width * x.element_size()))))
    starts = list(range(0, n_classes, step))

    def run(part: list[int]) -> None:
        buffer = torch.empty(t * step * width, dtype=x.dtype, device=x.device)  # reused per block
        for c0 in part:
            c1 = min(n_classes, c0 + step)
            coef = buffer[: t * (c1 - c0) * width].view(t, (c1 - c0) * width)
            block = operand[:, c0 * width : c1 * width].to(x.dtype)
            if mm is None:
                torch.matmul(x, block, out=coef)
            else:
                coef = mm(x, block, coef)
            blocks = coef.view(t, c1 - c0, width).to(out_dtype)
            energy[:, c0:c1] = torch.linalg.vector_norm(blocks, dim=2).square_()

    threads = min(torch.get_num_threads(), len(starts)) if x.device.type in PER_CLASS_DEVICES else 1
    if threads <= 1:
        run(starts)
    else:  # CPU: independent single-threaded GEMMs per Python thread (no barrier between cores)
        with lapack_threads(x.device), ThreadPoolExecutor(threads) as pool:
            list(pool.map(run, [starts[i::threads] for i in range(threads)]))
    return energy


def _pair_energies(
    x: torch.Tensor, query: torch.Tensor, cls: torch.Tensor, factors: torch.Tensor
) -> torch.Tensor:
    """``||F_c x_q||^2`` for each pair ``(query[i], cls[i])`` in float64 -> ``[P]``.

    ``x`` ``[t, D]`` and the float32 (or float64) factors are exact in float64, so the only
    error is float64 rounding (relative ``~ D 2^-53``): the exact scores the selection rests on.
    """
    n_classes, width, dim = factors.shape
    out = torch.empty(query.numel(), dtype=torch.float64, device=x.device)
    x = x.double()
    if x.device.type in PER_CLASS_DEVICES:  # one GEMM per class (as in grouped_project)
        order = torch.argsort(cls, stable=True)
        rows = x[query[order]]  # [P, D], class by class
        energy = torch.empty(order.numel(), dtype=torch.float64, device=x.device)

        def score(ranges: list[tuple[int, int, int]]) -> None:
            for c, start, stop in ranges:
                energy[start:stop] = torch.linalg.vector_norm(rows[start:stop] @ factors[c].double().T, dim=1)

        split_classes(score, list(class_ranges(cls, n_classes)))
        out[order] = energy.square_()
        return out
    for group, pairs, rows, slots, most in class_groups(cls, n_classes, width, dim, 8):
        padded = torch.zeros(group.numel(), most, dim, dtype=torch.float64, device=x.device)
        padded[rows, slots] = x[query[pairs]]
        coef = torch.bmm(padded, factors[group].double().mT)  # [g, most, w]
        out[pairs] = torch.linalg.vector_norm(coef[rows, slots], dim=1).square_()
    return out
