"""SSPProjector against the literal formulas of docs/method.md (dense float64 reference) and identities."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from _doubles import structured_projector_data as _structured

# ---------------------------------------------------------------------- dense reference (docs/method.md)
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

import ssp.methods.ssp.projector as projector_module
from ssp.methods.ssp.projector import SSPProjector


def _norm(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-300)


def _reference_rank(matrix: np.ndarray, rank) -> int:
    sigma = np.linalg.svd(matrix, compute_uv=False)
    numerical = int(np.linalg.matrix_rank(matrix))  # tol = max(shape) * eps * sigma_max
    if rank is None:
        return numerical
    if isinstance(rank, int):
        return min(rank, numerical)
    energy = np.cumsum(sigma**2)
    return min(int(np.argmax(energy >= rank * energy[-1])) + 1, numerical)


def _reference_basis(matrix: np.ndarray, rank) -> np.ndarray:
    _, _, vt = np.linalg.svd(matrix, full_matrices=True)
    return vt[: _reference_rank(matrix, rank)]


class DenseReference:
    """One explicit D x D projector per class, every query projected by every class (float64)."""

    def __init__(self, patches, labels, images, text, *, k=30, lam=10.0, kappa=10, rank=None):
        z, g, w = _norm(np.asarray(patches, np.float64)), _norm(np.asarray(images, np.float64)), _norm(
            np.asarray(text, np.float64)
        )
        n_classes = w.shape[0]
        k = min(k, z.shape[1])
        means, self.language_rows = [], []
        for c in range(n_classes):
            rows_v, rows_l = [], [lam * w[c]]
            for n in np.flatnonzero(np.asarray(labels) == c):
                s_v = z[n] @ g[n]
                kept = np.argsort(-s_v)[:k]
                rows_v += list(s_v[kept, None] * z[n, kept]) + [lam * g[n]]
                s_l = z[n] @ w[c]
                kept = np.argsort(-s_l)[:k]
                rows_l += list(s_l[kept, None] * z[n, kept])
            means.append(np.mean(rows_v, axis=0))
            self.language_rows.append(np.array(rows_l))
        self.vision_matrix = np.array(means)
        basis_v = _reference_basis(self.vision_matrix, rank)
        self.vision_rank = basis_v.shape[0]
        self.p_vision = basis_v.T @ basis_v
        bases = [_reference_basis(t, rank) for t in self.language_rows]
        self.class_ranks = [b.shape[0] for b in bases]
        self.p_class = np.stack([b.T @ b for b in bases])  # [C, D, D]
        self.kappa = min(kappa, n_classes)
        self.text = _norm(np.einsum("cde,ce->cd", self.p_class, w))

    def vision(self, x):
        return _norm(_norm(x) @ self.p_vision)

    def language(self, x):
        projected = np.einsum("cde,te->tcd", self.p_class, _norm(x))  # [T, C, D]
        top = np.argsort(-np.linalg.norm(projected, axis=-1), axis=1)[:, : self.kappa]
        return _norm(np.stack([projected[t, top[t]].mean(0) for t in range(len(x))]))


def make_support(seed=0, n_classes=5, dim=24, n_patches=6, shots=(1, 3, 2, 4, 2), shuffle=True):
    """Random support set with unequal shots in shuffled class order."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), shots)
    if shuffle:
        rng.shuffle(labels)
    n = labels.size
    patches = rng.normal(size=(n, n_patches, dim))
    images = rng.normal(size=(n, dim))
    text = rng.normal(size=(n_classes, dim))
    queries = rng.normal(size=(9, dim))
    return patches, labels, images, text, queries


def fit(patches, labels, images, text, path="auto", **params):
    proj = SSPProjector(**params)
    proj._language_path = path
    return proj.fit(patches, labels, image_features=images, text_features=text)


# ------------------------------------------------------------------------------ equivalence
@pytest.mark.parametrize("path", ["auto", "basis", "complement"])
@pytest.mark.parametrize(
    "case",
    [
        dict(dim=24, n_patches=6, k=3, shots=(1, 3, 2, 4, 2)),  # r < D/2: basis by default
        dict(dim=16, n_patches=5, k=5, shots=(2, 2, 3, 1, 3)),  # r > D/2 and R >= D: complement
    ],
)
def test_matches_dense_reference_float64(case, path):
    patches, labels, images, text, queries = make_support(
        dim=case["dim"], n_patches=case["n_patches"], shots=case["shots"]
    )
    ref = DenseReference(patches, labels, images, text, k=case["k"], kappa=2)
    proj = fit(patches, labels, images, text, path, patch_top_k=case["k"], class_top_k=2)
    if path == "auto":
        expected = "basis" if case["dim"] == 24 else "complement"
        assert proj.language_path_ == expected
    assert proj.class_ranks_.tolist() == ref.class_ranks
    assert proj.vision_rank_ == ref.vision_rank
    np.testing.assert_allclose(proj.transform(queries), ref.vision(queries), atol=1e-10)
    np.testing.assert_allclose(proj.transform(queries, view="language"), ref.language(queries), atol=1e-10)
    np.testing.assert_allclose(proj.text_features_, ref.text, atol=1e-10)


@pytest.mark.parametrize("path", ["basis", "complement"])
def test_matches_dense_reference_float32(path):
    patches, labels, images, text, queries = make_support(seed=3)
    ref = DenseReference(patches, labels, images, text, k=4, kappa=3)
    f32 = [a.astype(np.float32) for a in (patches, images, text, queries)]
    proj = fit(f32[0], labels, f32[1], f32[2], path, patch_top_k=4, class_top_k=3)
    assert proj.class_ranks_.tolist() == ref.class_ranks
    out = proj.transform(f32[3], view="language")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref.language(queries), atol=2e-5)
    np.testing.assert_allclose(proj.transform(f32[3]), ref.vision(queries), atol=2e-5)
    np.testing.assert_allclose(proj.text_features_, ref.text, atol=2e-5)


def test_float32_and_float64_agree_on_structured_data():
    rng = np.random.default_rng(7)
    dim, n_classes, shots, n_patches = 64, 6, 4, 12
    means = _norm(rng.normal(size=(n_classes, dim)))
    labels = np.repeat(np.arange(n_classes), shots)
    images = _norm(means[labels] + 0.5 * _norm(rng.normal(size=(labels.size, dim))))
    patches = _norm(images[:, None] + _norm(rng.normal(size=(labels.size, n_patches, dim))))
    text = _norm(means + 0.3 * _norm(rng.normal(size=(n_classes, dim))))
    queries = _norm(means[rng.integers(0, n_classes, 40)] + 0.5 * _norm(rng.normal(size=(40, dim))))
    p64 = fit(patches, labels, images, text, patch_top_k=8, class_top_k=3)
    p32 = fit(*(a.astype(np.float32) if a.dtype == np.float64 else a for a in (patches, labels, images, text)),
              patch_top_k=8, class_top_k=3)
    assert p64._language_factors.dtype == torch.float64 and p32._language_factors.dtype == torch.float32
    np.testing.assert_array_equal(p32.class_ranks_, p64.class_ranks_)
    for view in ("vision", "language"):
        np.testing.assert_allclose(p32.transform(queries.astype(np.float32), view=view),
                                   p64.transform(queries, view=view), atol=1e-5)


def test_support_order_does_not_matter():
    patches, labels, images, text, queries = make_support(seed=4)
    a = fit(patches, labels, images, text, patch_top_k=3, class_top_k=2)
    perm = np.random.default_rng(1).permutation(labels.size)
    b = fit(patches[perm], labels[perm], images[perm], text, patch_top_k=3, class_top_k=2)
    for view in ("vision", "language"):
        np.testing.assert_allclose(a.transform(queries, view=view), b.transform(queries, view=view), atol=1e-10)
    np.testing.assert_allclose(a.text_features_, b.text_features_, atol=1e-10)


# ------------------------------------------------------------------------------- identities
def test_text_projection_is_identity_at_full_rank():
    patches, labels, images, text, _ = make_support(seed=5)
    for dtype, atol in ((np.float64, 1e-12), (np.float32, 1e-6)):
        proj = fit(patches.astype(dtype), labels, images.astype(dtype), text.astype(dtype), patch_top_k=3)
        np.testing.assert_allclose(proj.text_features_, _norm(text), atol=atol)


def test_text_projection_is_not_identity_when_rank_is_capped():
    patches, labels, images, text, _ = make_support(seed=5)
    proj = fit(patches, labels, images, text, patch_top_k=3, rank=2, global_weight=1.0)
    ref = DenseReference(patches, labels, images, text, k=3, lam=1.0, rank=2)
    np.testing.assert_allclose(proj.text_features_, ref.text, atol=1e-10)
    assert np.abs(proj.text_features_ - _norm(text)).max() > 1e-2


def test_vision_is_identity_when_class_means_span_the_space():
    patches, labels, images, text, queries = make_support(seed=6, n_classes=10, dim=8,
                                                          shots=(2,) * 10, n_patches=4)
    proj = fit(patches, labels, images, text, patch_top_k=2)
    assert proj.vision_rank_ == 8
    np.testing.assert_allclose(proj.transform(queries), _norm(queries), atol=1e-12)


@pytest.mark.parametrize("path", ["basis", "complement"])
def test_idempotence_and_language_fixed_points(path):
    patches, labels, images, text, queries = make_support(seed=8, dim=32)
    proj = fit(patches, labels, images, text, path, patch_top_k=3, class_top_k=1)
    once = proj.transform(queries)
    np.testing.assert_allclose(proj.transform(once), once, atol=1e-12)
    # with one class kept, the language view lands in that class's span and stays there
    lang = proj.transform(queries, view="language")
    np.testing.assert_allclose(proj.transform(lang, view="language"), lang, atol=1e-12)
    # a vector inside class c's span is its own language projection
    ref = DenseReference(patches, labels, images, text, k=3, kappa=1)
    inside = _norm(np.random.default_rng(0).normal(size=(3, 32)) @ ref.p_class[2])
    np.testing.assert_allclose(proj.transform(inside, view="language"), inside, atol=1e-12)


@pytest.mark.parametrize("path", ["basis", "complement"])
def test_bases_are_orthonormal(path):
    patches, labels, images, text, _ = make_support(seed=9, dim=20)
    for dtype, atol in ((np.float64, 1e-12), (np.float32, 2e-6)):
        proj = fit(patches.astype(dtype), labels, images.astype(dtype), text.astype(dtype), path, patch_top_k=3)
        basis = proj.vision_basis_
        assert basis.shape == (proj.vision_rank_, 20)
        np.testing.assert_allclose(basis @ basis.T, np.eye(proj.vision_rank_), atol=atol)
        factors = proj._language_factors.double().numpy()
        widths = proj.class_ranks_ if path == "basis" else 20 - proj.class_ranks_
        for c, width in enumerate(widths):
            gram = factors[c] @ factors[c].T
            expected = np.zeros_like(gram)
            expected[np.arange(width), np.arange(width)] = 1.0  # zero padding rows beyond r_c
            np.testing.assert_allclose(gram, expected, atol=atol)


# ------------------------------------------------------------------------------------ ranks
def test_rank_int_caps_every_subspace():
    patches, labels, images, text, queries = make_support(seed=10)
    ref = DenseReference(patches, labels, images, text, k=3, kappa=2, rank=4)
    proj = fit(patches, labels, images, text, patch_top_k=3, class_top_k=2, rank=4)
    assert proj.vision_rank_ == 4 and proj.class_ranks_.tolist() == ref.class_ranks
    assert max(ref.class_ranks) == 4 and min(ref.class_ranks) == 4  # smallest class has 4 rows
    np.testing.assert_allclose(proj.transform(queries, view="language"), ref.language(queries), atol=1e-10)
    np.testing.assert_allclose(proj.transform(queries), ref.vision(queries), atol=1e-10)


def test_rank_energy_fraction():
    patches, labels, images, text, queries = make_support(seed=11)
    ref = DenseReference(patches, labels, images, text, k=3, kappa=2, rank=0.9)
    proj = fit(patches, labels, images, text, patch_top_k=3, class_top_k=2, rank=0.9)
    assert proj.class_ranks_.tolist() == ref.class_ranks
    assert proj.vision_rank_ == ref.vision_rank
    full = fit(patches, labels, images, text, patch_top_k=3)
    assert (proj.class_ranks_ < full.class_ranks_).any()
    np.testing.assert_allclose(proj.transform(queries, view="language"), ref.language(queries), atol=1e-10)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_numerical_rank_of_rank_deficient_data(dtype):
    rng = np.random.default_rng(12)
    dim, n_patches, k = 40, 5, 3
    labels = np.repeat(np.arange(4), 3)
    images = rng.normal(size=(12, dim))
    patches = rng.normal(size=(12, n_patches, dim))
    # class 0: the same image three times (few-shot sampling with replacement)
    patches[labels == 0] = patches[0]
    images[labels == 0] = images[0]
    text = rng.normal(size=(4, dim))
    # classes 2 and 3: identical support and text -> identical class means (vision rank 3)
    patches[labels == 3] = patches[labels == 2]
    images[labels == 3] = images[labels == 2]
    text[3] = text[2]
    cast = [a.astype(dtype) for a in (patches, images, text)]
    proj = fit(cast[0], labels, cast[1], cast[2], patch_top_k=k)
    assert proj.class_ranks_.tolist() == [k + 1, 3 * k + 1, 3 * k + 1, 3 * k + 1]
    assert proj.vision_rank_ == 3
    ref = DenseReference(patches, labels, images, text, k=k)
    assert ref.class_ranks == proj.class_ranks_.tolist()


def test_rank_tol_is_relative():
    patches, labels, images, text, _ = make_support(seed=13)
    loose = fit(patches, labels, images, text, patch_top_k=3, rank_tol=0.5)
    full = fit(patches, labels, images, text, patch_top_k=3)
    assert (loose.class_ranks_ < full.class_ranks_).all() and (loose.class_ranks_ >= 1).all()


@pytest.mark.parametrize("bad", [0, -3, 1.0, 1.5, 0.0, True, "full", np.nan])
def test_invalid_rank_is_rejected(bad):
    patches, labels, images, text, _ = make_support()
    with pytest.raises(ValueError, match="rank must be"):
        fit(patches, labels, images, text, rank=bad)


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(patch_top_k=0), "patch_top_k"),
        (dict(class_top_k=2.5), "class_top_k"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(global_weight=-1.0), "global_weight"),
        (dict(global_weight=float("inf")), "global_weight"),
        (dict(rank_tol=-1e-3), "rank_tol"),
    ],
)
def test_invalid_params_are_rejected(params, match):
    patches, labels, images, text, _ = make_support()
    with pytest.raises(ValueError, match=match):
        fit(patches, labels, images, text, **params)


def test_top_k_larger_than_patches_and_classes_is_clipped():
    patches, labels, images, text, queries = make_support(seed=14, n_patches=4)
    proj = fit(patches, labels, images, text, patch_top_k=30, class_top_k=50)
    ref = DenseReference(patches, labels, images, text, k=4, kappa=5)
    assert proj.n_patches_kept_ == 4
    np.testing.assert_allclose(proj.transform(queries, view="language"), ref.language(queries), atol=1e-10)


# --------------------------------------------------------------------------------- chunking
@pytest.mark.parametrize("path", ["basis", "complement"])
def test_chunking_does_not_change_results(path, monkeypatch):
    patches, labels, images, text, queries = make_support(seed=15, dim=20)
    queries = np.random.default_rng(0).normal(size=(50, 20))
    base = fit(patches, labels, images, text, path, patch_top_k=3, class_top_k=3)
    expected = {v: base.transform(queries, view=v) for v in ("vision", "language")}
    for chunk in (1, 7):
        proj = fit(patches, labels, images, text, path, patch_top_k=3, class_top_k=3, chunk_size=chunk)
        for view in ("vision", "language"):
            np.testing.assert_allclose(proj.transform(queries, view=view), expected[view], atol=1e-12)
    # a tiny memory budget: one class per fit chunk, one query per chunk, one class per group
    import ssp.methods.ssp.scoring as scoring_module
    import ssp.methods.ssp.parallel as parallel_module
    import ssp.methods.ssp.subspaces as subspaces_module

    monkeypatch.setattr(projector_module, "BLOCK_BUDGET_BYTES", 1)
    monkeypatch.setattr(scoring_module, "BLOCK_BUDGET_BYTES", 1)
    monkeypatch.setattr(subspaces_module, "BLOCK_BUDGET_BYTES", 1)
    monkeypatch.setattr(parallel_module, "BLOCK_BUDGET_BYTES", 1)
    monkeypatch.setattr(scoring_module, "_SCORE_BLOCK_BYTES", 1)  # one class per score block
    tiny = fit(patches, labels, images, text, path, patch_top_k=3, class_top_k=3)
    np.testing.assert_array_equal(tiny.class_ranks_, base.class_ranks_)
    np.testing.assert_allclose(tiny.text_features_, base.text_features_, atol=1e-12)
    for view in ("vision", "language"):
        np.testing.assert_allclose(tiny.transform(queries, view=view), expected[view], atol=1e-12)


# ------------------------------------------------------------------------- kinds and sklearn
def test_numpy_in_numpy_out_torch_in_torch_out():
    patches, labels, images, text, queries = make_support(seed=16)
    p_np = fit(patches, labels, images, text, patch_top_k=3)
    assert isinstance(p_np.vision_basis_, np.ndarray) and isinstance(p_np.text_features_, np.ndarray)
    assert isinstance(p_np.transform(queries, view="language"), np.ndarray)
    assert isinstance(p_np.class_ranks_, np.ndarray) and isinstance(p_np.vision_rank_, int)
    t = [torch.from_numpy(a) for a in (patches, labels, images, text, queries)]
    p_t = SSPProjector(patch_top_k=3, device="cpu").fit(t[0], t[1], image_features=t[2], text_features=t[3])
    assert p_t.device_ == torch.device("cpu")
    assert isinstance(p_t.vision_basis_, torch.Tensor) and isinstance(p_t.text_features_, torch.Tensor)
    out = p_t.transform(t[4], view="language")
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), p_np.transform(queries, view="language"), atol=1e-12)
    assert p_t.n_classes_ == 5 and p_t.n_features_in_ == 24
    # float16 caches are promoted to float32
    p_h = fit(patches.astype(np.float16), labels, images.astype(np.float16), text.astype(np.float16), patch_top_k=3)
    assert p_h.transform(queries.astype(np.float16)).dtype == np.float32


def test_outputs_are_unit_norm_and_fit_transform_matches():
    patches, labels, images, text, queries = make_support(seed=17)
    proj = SSPProjector(patch_top_k=3, rank=3)
    out = proj.fit_transform(patches, labels, image_features=images, text_features=text, view="language")
    np.testing.assert_allclose(out, proj.transform(images, view="language"), atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-12)
    vis = proj.fit_transform(patches, labels, image_features=images, text_features=text)
    np.testing.assert_allclose(vis, proj.transform(images), atol=1e-12)
    # scaling a query does not change its projection (inputs are normalised)
    np.testing.assert_allclose(proj.transform(5 * queries, view="language"),
                               proj.transform(queries, view="language"), atol=1e-12)


def test_sklearn_clone_and_params():
    proj = SSPProjector(patch_top_k=7, rank=0.95, device="cpu")
    params = proj.get_params()
    assert params == dict(patch_top_k=7, class_top_k=10, global_weight=10.0, rank=0.95,
                          rank_tol=None, chunk_size=4096, score_precision="auto", device="cpu")
    patches, labels, images, text, _ = make_support()
    proj.fit(patches, labels, image_features=images, text_features=text)
    twin = clone(proj)
    assert twin.get_params() == params
    assert not hasattr(twin, "vision_basis_")
    with pytest.raises(NotFittedError):
        twin.transform(images)


# ---------------------------------------------------------------------------------- errors
def test_transform_before_fit_raises_not_fitted():
    with pytest.raises(NotFittedError):
        SSPProjector().transform(np.zeros((2, 4)))


def test_bad_inputs_give_clear_errors():
    patches, labels, images, text, queries = make_support()
    proj = fit(patches, labels, images, text, patch_top_k=3)
    with pytest.raises(ValueError, match="view must be one of"):
        proj.transform(queries, view="text")
    with pytest.raises(ValueError, match="X has 10 features, but SSPProjector is expecting 24"):
        proj.transform(queries[:, :10])
    with pytest.raises(ValueError, match="2 dimensions"):
        proj.transform(queries[0])
    bad = queries.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        proj.transform(bad)

    cases = [
        ((patches[0], labels, images, text), "3 dimensions"),
        ((patches, labels, images[:-1], text), "image_features has shape"),
        ((patches, labels, images[:, :10], text), "image_features has shape"),
        ((patches, labels, images, text[:, :10]), "text_features has shape"),
        ((patches, labels[:-1], images, text), "labels has"),
        ((patches, np.where(labels == 0, 7, labels), images, text), "contains class 7"),
        ((patches, np.where(labels == 0, -1, labels), images, text), ">= 0"),
        ((patches, np.where(labels == 3, 0, labels), images, text), r"class\(es\) \[3\] have no support"),
        ((np.where(np.arange(patches.shape[0])[:, None, None] == 2, np.inf, patches), labels, images, text),
         "patch_features contains NaN or infinite"),
        ((patches, labels, np.full_like(images, np.nan), text), "image_features contains"),
        ((patches, labels, images, np.vstack([text[:-1], np.zeros(24)])), "all zero"),
        ((patches.astype(complex), labels, images, text), "Complex data not supported"),
        ((np.array(patches, dtype=object), labels, images, text.astype(str)), "must hold numbers"),
    ]
    for (z, y, g, w), match in cases:
        with pytest.raises((ValueError, TypeError), match=match):
            SSPProjector(patch_top_k=3).fit(z, y, image_features=g, text_features=w)
    # array-likes and integer features are converted (scikit-learn's convention), not refused
    listed = SSPProjector(patch_top_k=3).fit(patches.tolist(), labels, image_features=images, text_features=text)
    np.testing.assert_allclose(listed.transform(queries), proj.transform(queries), atol=1e-12)
    SSPProjector(patch_top_k=3).fit(np.round(10 * patches).astype(int), labels, image_features=images,
                                    text_features=text)
    # a failed fit leaves the projector unfitted (the fit template of every estimator), never
    # half-fitted nor silently keeping the previous fit
    with pytest.raises(ValueError):
        proj.fit(patches, np.where(labels == 3, 0, labels), image_features=images, text_features=text)
    with pytest.raises(NotFittedError):
        proj.transform(queries, view="language")


# ------------------------------------------------------------------ structured data
# ----------------------------------------------------------------------- Cholesky-QR route
@pytest.mark.parametrize("path", ["basis", "complement"])
def test_cholesky_qr_route_gives_the_eigh_projectors(path, monkeypatch):
    (patches, images, text, queries), labels = _structured(seed=24, dim=96, shots=4)
    labels = labels.copy()
    labels[-2:] = 0  # unequal shots: zero padding rows in a chunk
    calls = []
    original = SSPProjector._full_rank_bases

    def spy(self, *args):
        out = original(self, *args)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(SSPProjector, "_full_rank_bases", spy)
    qr = fit(patches, labels, images, text, path, patch_top_k=6, class_top_k=3)
    assert calls and all(calls)  # the QR route ran
    monkeypatch.setattr(SSPProjector, "_full_rank_bases", lambda self, *a: None)
    eig = fit(patches, labels, images, text, path, patch_top_k=6, class_top_k=3)
    np.testing.assert_array_equal(qr.class_ranks_, eig.class_ranks_)
    pq = torch.einsum("cwd,cwe->cde", qr._language_factors.double(), qr._language_factors.double())
    pe = torch.einsum("cwd,cwe->cde", eig._language_factors.double(), eig._language_factors.double())
    torch.testing.assert_close(pq, pe, atol=2e-6, rtol=0)
    np.testing.assert_allclose(qr.text_features_, eig.text_features_, atol=2e-6)
    np.testing.assert_allclose(qr.transform(queries, view="language"), eig.transform(queries, view="language"),
                               atol=2e-6)


def test_cholesky_qr_route_declines_rank_deficient_classes(monkeypatch):
    (patches, images, text, _), labels = _structured(seed=25, n_classes=4, dim=64, shots=3)
    patches[labels == 1] = patches[np.flatnonzero(labels == 1)[0]]  # one image three times
    calls = []
    original = SSPProjector._full_rank_bases
    monkeypatch.setattr(SSPProjector, "_full_rank_bases",
                        lambda self, *a: calls.append(original(self, *a)) or calls[-1])
    proj = fit(patches, labels, images, text, patch_top_k=5)
    assert calls and any(c is None for c in calls)  # fell back to eigh
    assert proj.class_ranks_[1] == 5 + 1 and proj.class_ranks_[0] == 3 * 5 + 1


def test_classifier_passes_the_patches_through_uncopied(monkeypatch):
    """The classifiers hand [N, L, D] patches to the projector as given (float16 here): the
    projector converts them chunk by chunk, so no full float32 / device copy is made."""
    from ssp.methods.cache_models import APE

    (patches, images, text, queries), labels = _structured(seed=26, n_classes=5, dim=32)
    half = patches.astype(np.float16)
    seen = []
    original = SSPProjector.fit

    def spy(self, patch_features, *args, **kwargs):
        seen.append(patch_features)
        return original(self, patch_features, *args, **kwargs)

    monkeypatch.setattr(SSPProjector, "fit", spy)
    model = APE(projector=SSPProjector(patch_top_k=4, class_top_k=2)).fit(
        images, labels, text_features=text, patch_features=half)
    assert len(seen) == 1 and seen[0] is half
    assert model.decision_function(queries).shape == (len(queries), 5)
    with pytest.raises(ValueError, match=r"patch_features must be \[N, L, D\]"):
        APE(projector=SSPProjector()).fit(images, labels, text_features=text, patch_features=half[:, 0])
