"""ssp.metrics against small dense float64 references written the slow, obvious way."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ssp.metrics import (
    RELIABILITY_VERSION,
    accuracy_at_coverage,
    aps_uniforms,
    aurc,
    brier_score,
    calibration_errors,
    conformal_quantile,
    conformal_scores,
    fit_temperature,
    negative_log_likelihood,
    per_class_results,
    prediction_sets,
    reliability,
    risk_coverage,
    softmax,
)


def _data(m=300, c=7, scale=3.0, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, m)
    z = rng.normal(size=(m, c)) * scale
    z[np.arange(m), y] += scale  # informative logits
    return z, y


def _dense_probs(z):
    out = []
    for row in z:
        e = [math.exp(v - max(row)) for v in row]
        out.append([v / sum(e) for v in e])
    return np.array(out)


def _dense_ece_mce(conf, correct, n_bins):
    gaps, weights = [], []
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        members = [i for i in range(len(conf)) if (lo < conf[i] <= hi) or (b == 0 and conf[i] == 0)]
        if members:
            acc = sum(correct[i] for i in members) / len(members)
            mean_conf = sum(conf[i] for i in members) / len(members)
            gaps.append(abs(acc - mean_conf))
            weights.append(len(members) / len(conf))
    return sum(g * w for g, w in zip(gaps, weights)), max(gaps)


def test_softmax_nll_brier_match_dense():
    z, y = _data()
    p = _dense_probs(z)
    np.testing.assert_allclose(softmax(z), p, rtol=1e-12)
    nll = -sum(math.log(p[i, y[i]]) for i in range(len(y))) / len(y)
    assert negative_log_likelihood(z, y) == pytest.approx(nll, rel=1e-10)
    brier = sum(sum((p[i, c] - (c == y[i])) ** 2 for c in range(p.shape[1])) for i in range(len(y))) / len(y)
    assert brier_score(p, y) == pytest.approx(brier, rel=1e-10)
    from sklearn.metrics import log_loss

    assert negative_log_likelihood(z, y) == pytest.approx(log_loss(y, p, labels=range(7)), rel=1e-8)


@pytest.mark.parametrize("n_bins", [1, 5, 15])
def test_ece_mce_match_dense(n_bins):
    z, y = _data(seed=n_bins)
    p = softmax(z)
    conf, correct = p.max(1), p.argmax(1) == y
    conf[:3] = [0.0, 1.0, 1.0 / n_bins]  # the edges: 0 in bin 0, an edge in the bin below it
    ece, mce = calibration_errors(conf, correct, n_bins)
    ref_ece, ref_mce = _dense_ece_mce(conf.tolist(), correct.tolist(), n_bins)
    assert ece == pytest.approx(ref_ece, abs=1e-12)
    assert mce == pytest.approx(ref_mce, abs=1e-12)


def test_perfectly_calibrated_bins_have_zero_ece():
    conf = np.array([0.5, 0.5, 1.0, 1.0])
    assert calibration_errors(conf, np.array([True, False, True, True]), 15) == (0.0, 0.0)
    ece, mce = calibration_errors(np.array([0.9, 0.9]), np.array([False, False]), 15)
    assert ece == pytest.approx(0.9) and mce == pytest.approx(0.9)


def test_temperature_minimises_nll_over_a_dense_grid():
    z, y = _data(scale=6.0)  # over-confident logits: T > 1
    t = fit_temperature(z, y)
    grid = np.exp(np.linspace(np.log(0.05), np.log(50), 4001))
    nlls = [negative_log_likelihood(z / g, y) for g in grid]
    assert t == pytest.approx(grid[int(np.argmin(nlls))], rel=5e-3)
    assert negative_log_likelihood(z / t, y) <= min(nlls) + 1e-9
    assert t > 1


def test_temperature_bounds_are_reachable():
    z = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert fit_temperature(z, np.array([1, 0])) == pytest.approx(1e2)  # always wrong: as flat as allowed


def _dense_risk(conf, correct):
    order = sorted(range(len(conf)), key=lambda i: -conf[i])  # Python's sort is stable
    risks = []
    for k in range(1, len(conf) + 1):
        kept = order[:k]
        risks.append(1 - sum(correct[i] for i in kept) / k)
    return order, risks


def test_risk_coverage_aurc_and_accuracy_at_coverage_match_dense():
    z, y = _data(m=97)
    p = softmax(z)
    conf, correct = p.max(1), p.argmax(1) == y
    conf[10:20] = conf[10]  # ties keep input order
    order, risks = _dense_risk(conf.tolist(), correct.tolist())
    cov, risk = risk_coverage(conf, correct)
    np.testing.assert_allclose(risk, risks, atol=1e-12)
    np.testing.assert_allclose(cov, np.arange(1, 98) / 97)
    assert aurc(conf, correct) == pytest.approx(sum(risks) / len(risks), abs=1e-12)
    for c in (0.5, 0.8, 1.0):
        k = math.ceil(c * 97)
        assert accuracy_at_coverage(conf, correct, c) == pytest.approx(sum(correct[i] for i in order[:k]) / k)


def _dense_aps_score(p_row, label, u=1.0):
    """Romano et al.'s score: the probability ranked above ``label`` plus ``u`` times its own."""
    order = sorted(range(len(p_row)), key=lambda c: (-p_row[c], c))
    above = 0.0
    for c in order:
        if c == label:
            return above + u * p_row[c]
        above += p_row[c]


def test_conformal_scores_quantile_and_sets_match_dense():
    z, y = _data(m=50, c=6)
    p = softmax(z)
    lac = conformal_scores(p, y, "lac")
    aps = conformal_scores(p, y, "aps")
    np.testing.assert_allclose(lac, [1 - p[i, y[i]] for i in range(50)], atol=1e-15)
    np.testing.assert_allclose(aps, [_dense_aps_score(p[i].tolist(), y[i]) for i in range(50)], atol=1e-12)
    for alpha in (0.05, 0.1, 0.3):
        q = conformal_quantile(lac, alpha)
        rank = math.ceil(51 * (1 - alpha))   # the rank-th smallest of the 50 scores
        assert q == sorted(lac)[rank - 1]
        for score, s in (("lac", lac), ("aps", aps)):
            q = conformal_quantile(s, alpha)
            sets = prediction_sets(p, q, score)
            all_scores = np.array([[(1 - p[i, c]) if score == "lac" else _dense_aps_score(p[i].tolist(), c)
                                    for c in range(6)] for i in range(50)])
            clear = np.abs(all_scores - q) > 1e-12   # float summation order decides exact ties only
            np.testing.assert_array_equal(sets[clear], (all_scores <= q)[clear])
            # on its own calibration data, the set holds the true label at least ceil(51(1-a)) times
            assert sets[np.arange(50), y].sum() >= rank
    assert conformal_quantile(lac[:5], 0.1) == math.inf  # ceil(6 * 0.9) = 6 > 5 scores


def test_randomised_aps_matches_dense_scores_and_sets():
    z, y = _data(m=40, c=6, seed=5)
    p = softmax(z)
    u = np.random.default_rng(9).random(40)
    aps = conformal_scores(p, y, "aps", u=u)
    np.testing.assert_allclose(aps, [_dense_aps_score(p[i].tolist(), y[i], u[i]) for i in range(40)], atol=1e-12)
    # u = 1 is the deterministic score; LAC ignores u
    np.testing.assert_array_equal(conformal_scores(p, y, "aps", u=np.ones(40)), conformal_scores(p, y, "aps"))
    np.testing.assert_array_equal(conformal_scores(p, y, "lac", u=u), conformal_scores(p, y, "lac"))
    q = conformal_quantile(aps, 0.2)
    sets = prediction_sets(p, q, "aps", u=u)
    dense = np.array([[_dense_aps_score(p[i].tolist(), c, u[i]) for c in range(6)] for i in range(40)])
    clear = np.abs(dense - q) > 1e-12
    np.testing.assert_array_equal(sets[clear], (dense <= q)[clear])
    # the randomised sets are nested prefixes of the ranking (one u per sample, shared by its classes)
    ranked = np.take_along_axis(sets, np.argsort(-p, axis=1, kind="stable"), axis=1)
    assert np.all(ranked[:, :-1] >= ranked[:, 1:])
    # u <= 1: at the same threshold a randomised set holds every class of the deterministic one
    assert np.all(sets[prediction_sets(p, q, "aps")])
    with pytest.raises(ValueError, match=r"\[M\] = \[40\]"):
        conformal_scores(p, y, "aps", u=u[:3])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        prediction_sets(p, q, "aps", u=u + 1.5)


def test_randomised_aps_coverage_is_exact_where_deterministic_aps_is_not():
    """On confident logits the deterministic APS score of a right, confident image is its top
    probability, so its sets are empty for many of them; the randomised score's coverage is exact:
    in [1 - alpha, 1 - alpha + 1/(n + 1)] on average over calibration / test splits."""
    z, y = _data(m=3000, c=20, scale=6.0, seed=4)
    z[np.arange(3000), y] += 12.0   # about 84 % right, with top probabilities close to 1
    p = softmax(z)
    rng = np.random.default_rng(1)
    cov = {"det": [], "rand": []}
    empty = {"det": [], "rand": []}
    for _ in range(60):
        perm = rng.permutation(3000)
        cal, test = perm[:300], perm[300:]
        uc, ut = rng.random(300), rng.random(2700)
        for kind, (a, b) in (("det", (None, None)), ("rand", (uc, ut))):
            q = conformal_quantile(conformal_scores(p[cal], y[cal], "aps", u=a), 0.1)
            sets = prediction_sets(p[test], q, "aps", u=b)
            cov[kind].append(sets[np.arange(2700), y[test]].mean())
            empty[kind].append((sets.sum(1) == 0).mean())
    assert 0.895 <= np.mean(cov["rand"]) <= 0.9 + 1 / 301 + 0.005, np.mean(cov["rand"])
    assert np.mean(empty["det"]) > 0.05 > np.mean(empty["rand"]), (np.mean(empty["det"]), np.mean(empty["rand"]))


def test_split_conformal_covers_on_exchangeable_data():
    """Average test coverage over many random calibration/test splits is at least 1 - alpha."""
    z, y = _data(m=4000, c=10, scale=1.5, seed=3)
    p = softmax(z)
    rng = np.random.default_rng(0)
    for score in ("lac", "aps"):
        covs = []
        for _ in range(40):
            perm = rng.permutation(4000)
            cal, test = perm[:200], perm[200:]
            q = conformal_quantile(conformal_scores(p[cal], y[cal], score), 0.1)
            covs.append(prediction_sets(p[test], q, score)[np.arange(3800), y[test]].mean())
        assert 0.895 <= np.mean(covs) <= 0.93, (score, np.mean(covs))


def test_per_class_results_against_a_loop():
    y = np.array([0, 0, 1, 1, 1, 3])
    pred = np.array([0, 1, 1, 1, 0, 3])
    res = per_class_results(y, pred, 4)
    cm = np.zeros((4, 4), int)
    for t, q in zip(y, pred):
        cm[t, q] += 1
    np.testing.assert_array_equal(res["confusion"], cm)
    np.testing.assert_allclose(res["accuracy"], [50.0, 200 / 3, np.nan, 100.0])
    np.testing.assert_array_equal(res["support"], [2, 3, 0, 1])


def test_reliability_fits_on_validation_only_and_samples_recompute():
    z, y = _data(m=400, scale=5.0, seed=1)
    zv, yv = _data(m=200, scale=5.0, seed=2)
    metrics, samples = reliability(z, y, zv, yv, alpha=0.1)
    assert metrics["temperature"] == pytest.approx(fit_temperature(zv, yv))
    assert metrics["temperature_scaled"]["nll"] == pytest.approx(negative_log_likelihood(z / metrics["temperature"], y))
    ece, _ = calibration_errors(samples["confidence"], samples["label"] == samples["prediction"], 15)
    assert metrics["raw"]["ece"] == ece
    for score in ("lac", "aps"):
        c = metrics["conformal"][score]
        assert c["threshold"] == samples[f"{score}_threshold"]
        assert c["coverage"] == np.mean(samples[f"{score}_score"] <= c["threshold"])
        assert c["mean_set_size"] == pytest.approx(samples[f"{score}_set_size"].mean())
    # APS is randomised with the recorded stream: the validation draws first, then the test draws
    assert metrics["version"] == RELIABILITY_VERSION and metrics["conformal"]["aps_randomisation"]["seed"] == 0
    u_val, u_test = aps_uniforms(0, 200, 400)
    q = conformal_quantile(conformal_scores(softmax(zv), yv, "aps", u=u_val), 0.1)
    assert metrics["conformal"]["aps"]["threshold"] == q
    np.testing.assert_array_equal(samples["aps_score"], conformal_scores(softmax(z), y, "aps", u=u_test))
    again, _ = reliability(z, y, zv, yv, alpha=0.1)
    other, _ = reliability(z, y, zv, yv, alpha=0.1, seed=2)
    assert again == metrics and other["conformal"]["aps"]["threshold"] != q
    assert other["conformal"]["lac"] == metrics["conformal"]["lac"]
    # changing the test labels changes no validation-fitted quantity
    metrics2, _ = reliability(z, (y + 1) % 7, zv, yv, alpha=0.1)
    assert metrics2["temperature"] == metrics["temperature"]
    assert metrics2["conformal"]["lac"]["threshold"] == metrics["conformal"]["lac"]["threshold"]


def test_bad_inputs_say_what_is_wrong():
    with pytest.raises(ValueError, match=r"\[M, C\]"):
        softmax(np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        negative_log_likelihood(np.array([[np.nan, 0.0]]), np.array([0]))
    with pytest.raises(ValueError, match="0..1"):
        negative_log_likelihood(np.zeros((1, 2)), np.array([2]))
    with pytest.raises(ValueError, match="alpha"):
        conformal_quantile(np.ones(3), 1.5)
    with pytest.raises(ValueError, match="score"):
        conformal_scores(np.ones((1, 2)) / 2, np.array([0]), "raps")


def test_row_blocks_equal_one_block(monkeypatch):
    """Conformal scores, sets and every reliability number computed block by block (bounded
    temporaries) equal the whole-array ones."""
    import ssp.metrics.calibration as calibration

    z, y = _data(m=203, c=9, seed=7)
    p = softmax(z)
    u = np.random.default_rng(3).random(203)
    zv, yv = _data(m=50, c=9, seed=8)

    def everything():
        return (conformal_scores(p, y, "aps", u=u), prediction_sets(p, 0.7, "aps", u=u), conformal_scores(p, y, "aps"),
                prediction_sets(p, 0.7, "lac"), reliability(z, y, zv, yv))

    monkeypatch.setattr(calibration, "BLOCK_ELEMENTS", 1 << 40)
    whole = everything()
    monkeypatch.setattr(calibration, "BLOCK_ELEMENTS", 9 * 4 + 2)   # 4 rows a block, the last one short
    assert [(b.start, b.stop) for b in calibration.row_blocks(203, 9)][-2:] == [(196, 200), (200, 203)]
    blocks = everything()
    for a, b in zip(whole[:4], blocks[:4]):
        np.testing.assert_array_equal(a, b)
    (m1, s1), (m2, s2) = whole[4], blocks[4]
    for part in ("raw", "temperature_scaled"):
        assert m1[part]["ece"] == m2[part]["ece"] and m1[part]["mce"] == m2[part]["mce"]
        assert m2[part]["nll"] == pytest.approx(m1[part]["nll"], rel=1e-13)
        assert m2[part]["brier"] == pytest.approx(m1[part]["brier"], rel=1e-13)
    assert m1["conformal"] == m2["conformal"]
    for key in s1:
        np.testing.assert_array_equal(s1[key], s2[key])
