"""Exact low-precision class selection of SSPProjector's language view.

A screen (bfloat16 or TF32 operands, float32 accumulation) scores every class; a rigorous
per-class, per-query bound decides which classes could still be in the top kappa; those are
re-scored in float64. The selection must be the exact top kappa (float64 reference), equal to
the float32 path's wherever float32 can resolve the order, with ties resolved towards the lower
class index and counted. Small float32 data (seconds).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _doubles import structured_projector_data as _structured

import ssp.methods.ssp.projector as projector_module
import ssp.methods.ssp.scoring as scoring_module
import ssp.methods.ssp.subspaces as subspaces_module
from ssp.methods.ssp.projector import SSPProjector

SCREENS = ["bfloat16", "tfloat32"]



def _norm(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def fit(patches, labels, images, text, path="auto", **params):
    proj = SSPProjector(device="cpu", **params)
    proj._language_path = path
    return proj.fit(patches, labels, image_features=images, text_features=text)


def _exact_scores(proj, x):
    """float64 scores ``[t, C]`` (energy, or minus the complement's) of the stored factors and
    the queries as the projector sees them (normalised in float32)."""
    f = proj._language_factors.double().numpy()
    x = projector_module.l2_normalize(torch.as_tensor(np.asarray(x, np.float32))).double().numpy()
    e = np.linalg.norm(np.einsum("cwd,td->tcw", f, x), axis=2) ** 2
    return -e if proj.language_path_ == "complement" else e


def _exact_top(scores, kappa):
    """Top-kappa sets of float64 scores, ties towards the lower class index."""
    order = np.argsort(-scores, axis=1, kind="stable")
    return [frozenset(r) for r in order[:, :kappa].tolist()]


def _selection(proj, x):
    """The classes the projector's language view selects for queries x (numpy, any size)."""
    proj._record_top = []
    proj.transform(x, view="language")
    top = torch.cat(proj._record_top)
    proj._record_top = None
    return [frozenset(r) for r in top.tolist()]


def _near_tie_queries(proj, x0, kappa, n_steps=40):
    """Queries on segments x0 -> x0 + v where the kappa-th and (kappa+1)-th classes swap, sampled
    at relative offsets 1e-7 .. 1e-1 around the crossing: gaps far below bfloat16 resolution."""
    f = proj._language_factors.double().numpy()
    sign = -1.0 if proj.language_path_ == "complement" else 1.0
    def scores(x):
        x = _norm(np.atleast_2d(x))
        e = np.linalg.norm(np.einsum("cwd,td->tcw", f, x), axis=2) ** 2
        return sign * e

    out = []
    order = np.argsort(-scores(x0), axis=1)
    for i in range(len(x0)):
        a, b = order[i, kappa - 1], order[i, kappa]
        grad = lambda c: sign * (f[c].T @ (f[c] @ x0[i]))  # noqa: E731
        v = grad(b) - grad(a)  # raises class b against class a
        gap = lambda t: np.diff(scores(x0[i] + t * v)[0, [b, a]])[0]  # noqa: E731  s_a - s_b
        lo, hi = 0.0, 1.0
        if gap(hi) > 0:
            continue
        for _ in range(60):  # bisection for the crossing in float64
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if gap(mid) > 0 else (lo, mid)
        offsets = np.concatenate([-np.logspace(-7, -1, n_steps // 2), np.logspace(-7, -1, n_steps // 2)])
        out.append(_norm(x0[i] + lo * (1 + offsets)[:, None] * v))
    return np.concatenate(out).astype(np.float32)


@pytest.mark.parametrize("screen", SCREENS)
@pytest.mark.parametrize("path", ["basis", "complement"])
def test_screened_selection_is_exact_on_near_ties(screen, path):
    (patches, images, text, queries), labels = _structured(seed=21)
    kappa = 3
    kw = dict(patch_top_k=4, class_top_k=kappa)
    p32 = fit(patches, labels, images, text, path, score_precision="float32", **kw)
    low = fit(patches, labels, images, text, path, score_precision=screen, **kw)
    assert (p32.score_precision_used_, low.score_precision_used_) == ("float32", screen)
    assert low.score_kernel_ == ("native" if screen == "bfloat16" and scoring_module._fast_bfloat16(
        torch.device("cpu")) else "emulated")
    x = np.concatenate([queries, _near_tie_queries(p32, queries[:12].astype(np.float64), kappa)])
    exact = _exact_scores(p32, x)
    want = _exact_top(exact, kappa)
    # the screen alone picks other classes on many of these queries ...
    xt = projector_module.l2_normalize(torch.as_tensor(x))
    energy, _ = low._low_precision.energies(xt)
    raw = (-energy if path == "complement" else energy).topk(kappa, dim=1).indices
    assert sum(frozenset(r) != w for r, w in zip(raw.tolist(), want)) >= 5
    # ... the re-scoring gives the exact top kappa on every query, far fewer pairs than all
    got = _selection(low, x)
    assert got == want
    stats = low._scoring_stats
    assert stats["queries"] == len(x) and 0 < stats["rescored_pairs"] < 0.8 * len(x) * p32.n_classes_
    # and the float32 path's selection wherever float32 resolves the kappa-th gap
    ranked = -np.sort(-exact, axis=1)
    resolvable = ranked[:, kappa - 1] - ranked[:, kappa] > 1e-5
    assert resolvable.sum() > len(queries) + 50 and (~resolvable).sum() > 50
    sel32 = _selection(p32, x)
    assert all(got[i] == sel32[i] for i in np.flatnonzero(resolvable))
    same = np.array([a == b for a, b in zip(got, sel32)])
    np.testing.assert_allclose(low.transform(x, view="language")[same], p32.transform(x, view="language")[same],
                               atol=2e-6)
    np.testing.assert_array_equal(low.transform(x), p32.transform(x))  # vision view untouched
    np.testing.assert_array_equal(low.text_features_, p32.text_features_)


@pytest.mark.parametrize("screen", ["float32", *SCREENS])
def test_exact_ties_go_to_the_lower_class_index_and_are_counted(screen):
    """Classes 0 and 5 (and 2 and 7) are the same class twice: every query scores them equally,
    and where the kappa boundary falls between them the lower index must be kept."""
    (patches, images, text, queries), labels = _structured(seed=31, n_classes=8, shots=2)
    for dup, src in ((5, 0), (7, 2)):
        patches[labels == dup], images[labels == dup], text[dup] = patches[labels == src], images[labels == src], text[src]
    kappa = 3
    proj = fit(patches, labels, images, text, "basis", patch_top_k=4, class_top_k=kappa, score_precision=screen)
    f = proj._language_factors
    assert torch.equal(f[0], f[5]) and torch.equal(f[2], f[7])
    exact = _exact_scores(proj, queries)
    assert np.array_equal(exact[:, 0], exact[:, 5])
    got = _selection(proj, queries)
    order = np.argsort(-exact, axis=1, kind="stable")
    boundary = [i for i in range(len(queries)) if {order[i, kappa - 1], order[i, kappa]} in ({0, 5}, {2, 7})]
    assert len(boundary) >= 3  # the data puts the boundary between twins on some queries
    for i in boundary:
        assert got[i] == frozenset(order[i, :kappa].tolist())  # the twin with the lower index
        assert min(order[i, kappa - 1], order[i, kappa]) in got[i]
        assert max(order[i, kappa - 1], order[i, kappa]) not in got[i]
    assert proj._scoring_stats["ties"] >= len(boundary)


@pytest.mark.parametrize("screen", SCREENS)
@pytest.mark.parametrize("path", ["basis", "complement"])
def test_screen_error_bound_holds_and_is_not_a_blanket(screen, path):
    (patches, images, text, queries), labels = _structured(seed=22, dim=96, shots=4)
    proj = fit(patches, labels, images, text, path, patch_top_k=6, score_precision=screen)
    low = proj._low_precision
    f = proj._language_factors
    x = np.concatenate([queries, _near_tie_queries(proj, queries[:5].astype(np.float64), 10, n_steps=10)])
    xt = projector_module.l2_normalize(torch.as_tensor(x))
    exact = -_exact_scores(proj, x) if path == "complement" else _exact_scores(proj, x)
    kernels = [(low.native, low.out_unit)]
    if screen == "bfloat16":  # both CPU kernels: bfloat16 GEMM with bfloat16 output, float32 GEMM
        kernels = [(True, 2.0**-8), (False, 0.0)]
    for native, out_unit in kernels:
        low.native, low.out_unit = native, out_unit
        energy, x_round = low.energies(xt)
        beta = low.energy_bound(energy, x_round.norm(dim=1), (x_round - xt).norm(dim=1)).double().numpy()
        err = np.abs(energy.double().numpy() - exact)
        assert (err <= beta).all() and (err > 0).any()
        assert (err / beta).max() > 0.02  # a bound, not a blanket
    # the rounding-error norms it rests on: rho >= ||round(F_c) - F_c||_2 (the actual rounding)
    err_mat = (low.screen.round(f).float() - f).double()
    assert (torch.linalg.matrix_norm(err_mat, ord=2) <= low.rho).all()
    assert (low.rho <= 3 * torch.linalg.matrix_norm(err_mat, ord=2)).all()
    assert (torch.linalg.matrix_norm(f.double(), ord=2) <= low.norm).all()


def test_tf32_rounding_is_round_to_nearest_on_ten_fraction_bits():
    a = torch.tensor([1.0 + 2.0**-10, 1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11, -(1.0 + 3 * 2.0**-11),
                      1.0 + 2.0**-11 + 2.0**-20, 3.0e-3, 0.0], dtype=torch.float32)
    r = scoring_module._round_tf32(a)
    expected = [1.0 + 2.0**-10, 1.0, 1.0 + 2.0**-9, -(1.0 + 2.0**-9), 1.0 + 2.0**-10]
    assert r[:5].tolist() == expected  # exact, halfway cases to even
    assert abs(r[5].item() - 3.0e-3) <= 3.0e-3 * 2.0**-11 and r[6].item() == 0.0
    mantissa = r.view(torch.int32) & 0x1FFF
    assert bool((mantissa == 0).all())


def test_auto_measures_and_never_picks_an_emulated_screen(monkeypatch):
    (patches, images, text, queries), labels = _structured(seed=23, n_classes=6, dim=32)
    monkeypatch.setattr(scoring_module, "_CALIBRATION", {})
    monkeypatch.delenv("SSP_SCORE_CALIBRATION", raising=False)
    kw = dict(patch_top_k=4, class_top_k=2)
    # no bfloat16 instructions (e.g. AVX2-only EPYC): no candidate, nothing timed, float32
    monkeypatch.setattr(scoring_module, "_cpu_flags", lambda: {"avx2", "fma"})
    p = fit(patches, labels, images, text, **kw)
    assert p.score_precision_used_ == "float32" and p._low_precision is None and p.score_timings_ == {}
    assert scoring_module._CALIBRATION == {}
    p64 = fit(patches.astype(np.float64), labels, images, text, **kw)
    assert p64.score_precision_used_ == "float64" and p64.score_timings_ == {}
    # native bfloat16: both are timed and the faster one runs
    monkeypatch.setattr(scoring_module, "_cpu_flags", lambda: {"avx512f", "amx_bf16"})
    pa = fit(patches, labels, images, text, **kw)
    timings = pa.score_timings_
    assert set(timings) == {"float32", "bfloat16"} and all(t > 0 for t in timings.values())
    assert pa.score_precision_used_ == min(timings, key=timings.get)
    # cached per device and size: a second fit reuses the measurement (forced here)
    (key,) = scoring_module._CALIBRATION
    for winner, loser in (("bfloat16", "float32"), ("float32", "bfloat16")):
        scoring_module._CALIBRATION[key] = {winner: 1.0, loser: 2.0}
        pw = fit(patches, labels, images, text, **kw)
        assert pw.score_precision_used_ == winner and pw.score_timings_ == {winner: 1.0, loser: 2.0}
        np.testing.assert_allclose(pw.transform(queries, view="language"), p.transform(queries, view="language"),
                                   atol=2e-6)
    # explicit requests are honoured without timing, emulated where not native
    monkeypatch.setattr(scoring_module, "_cpu_flags", lambda: set())
    pe = fit(patches, labels, images, text, score_precision="bfloat16", **kw)
    assert pe.score_kernel_ == "emulated" and pe.score_timings_ == {}
    np.testing.assert_allclose(pe.transform(queries, view="language"), p.transform(queries, view="language"),
                               atol=2e-6)
    with pytest.raises(ValueError, match="score_precision must be one of"):
        fit(patches, labels, images, text, score_precision="fp16")


def test_calibration_persists_in_a_json_file_when_asked(monkeypatch, tmp_path):
    (patches, images, text, _), labels = _structured(seed=24, n_classes=5, dim=32)
    store = tmp_path / "calibration.json"
    monkeypatch.setenv("SSP_SCORE_CALIBRATION", str(store))
    monkeypatch.setattr(scoring_module, "_CALIBRATION", {})
    monkeypatch.setattr(scoring_module, "_cpu_flags", lambda: {"avx512_bf16"})
    p = fit(patches, labels, images, text, patch_top_k=4, class_top_k=2)
    saved = json.loads(store.read_text())
    assert list(saved.values()) == [p.score_timings_]
    # a new process (empty memory) reads the file instead of measuring again
    monkeypatch.setattr(scoring_module, "_CALIBRATION", {})
    (key,) = saved
    saved[key] = {"float32": 5.0, "bfloat16": 1.0}
    store.write_text(json.dumps(saved))
    again = fit(patches, labels, images, text, patch_top_k=4, class_top_k=2)
    assert again.score_precision_used_ == "bfloat16" and again.score_timings_ == saved[key]


def test_auto_skips_the_bound_of_a_screen_whose_gemm_alone_is_slower(monkeypatch):
    """A screen costs at least its GEMM: when that alone is slower than the whole float32
    selection, auto records the GEMM's time and never builds the screen's bound."""
    import time

    (patches, images, text, _), labels = _structured(seed=25, n_classes=5, dim=32)
    monkeypatch.setattr(scoring_module, "_CALIBRATION", {})
    monkeypatch.delenv("SSP_SCORE_CALIBRATION", raising=False)
    monkeypatch.setattr(scoring_module, "_cpu_flags", lambda: {"amx_bf16"})
    slow = scoring_module._LowPrecisionScores.energies

    def slow_energies(self, x):
        time.sleep(0.05)
        return slow(self, x)

    def no_build(*args, **kwargs):
        raise AssertionError("the bound was built")

    monkeypatch.setattr(scoring_module._LowPrecisionScores, "energies", slow_energies)
    monkeypatch.setattr(scoring_module._LowPrecisionScores, "build", no_build)
    p = fit(patches, labels, images, text, patch_top_k=4, class_top_k=2)
    assert p.score_precision_used_ == "float32" and p._low_precision is None
    assert p.score_timings_["bfloat16"] >= 1000 * 0.05 / scoring_module._PROBE_ROWS["cpu"]
    assert p.score_timings_["bfloat16"] > p.score_timings_["float32"]


@pytest.mark.parametrize("path", ["basis", "complement"])
def test_gpu_code_paths_run_on_cpu(path, monkeypatch):
    """The batched-matmul projection / re-scoring (GPU) and the bfloat16 GEMM with float32 output
    (``torch.mm(..., out_dtype=float32)``, CUDA) give what the CPU paths give."""
    (patches, images, text, queries), labels = _structured(seed=27)
    kw = dict(patch_top_k=4, class_top_k=3)
    p32 = fit(patches, labels, images, text, path, score_precision="float32", **kw)
    low = fit(patches, labels, images, text, path, score_precision="bfloat16", **kw)
    x = np.concatenate([queries, _near_tie_queries(p32, queries[:6].astype(np.float64), 3, n_steps=10)])
    want = _selection(low, x), low.transform(x, view="language"), p32.transform(x, view="language")
    monkeypatch.setattr(subspaces_module, "PER_CLASS_DEVICES", ())
    monkeypatch.setattr(scoring_module, "PER_CLASS_DEVICES", ())
    real_mm = torch.mm

    def mm(a, b, *, out=None, out_dtype=None):  # CUDA's bf16 x bf16 -> float32: exact products
        if out_dtype is None:
            return real_mm(a, b, out=out)
        return real_mm(a.to(out_dtype), b.to(out_dtype))

    monkeypatch.setattr(torch, "mm", mm)
    monkeypatch.setattr(scoring_module, "_MM_OUT_DTYPE", {"cpu": True})
    monkeypatch.setattr(scoring_module, "_fast_bfloat16", lambda device: True)
    gpu_like = fit(patches, labels, images, text, path, score_precision="bfloat16", **kw)
    assert gpu_like._low_precision.out_unit == 0.0 and low._low_precision.out_unit in (0.0, 2.0**-8)
    assert _selection(gpu_like, x) == want[0] == _exact_top(_exact_scores(p32, x), 3)
    np.testing.assert_allclose(gpu_like.transform(x, view="language"), want[1], atol=1e-6)
    np.testing.assert_allclose(fit(patches, labels, images, text, path, score_precision="float32", **kw)
                               .transform(x, view="language"), want[2], atol=1e-6)
