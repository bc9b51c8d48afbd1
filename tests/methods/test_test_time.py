"""TDA and DMN-ZS against float64 references written from the papers (one query at a time, plain
lists as caches, every read-out summed entry by entry), on seeded streams that exercise every
rule: full caches swapping entries, the negative cache's entropy band, empty classes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ssp.methods import TDA, DMNZeroShot
from ssp.methods.stream import replay_memory


def _unit(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def tda_reference(X, W, *, pos_shot_capacity=3, pos_alpha=2.0, pos_beta=5.0, neg_shot_capacity=2,
                  neg_alpha=0.117, neg_beta=1.0, neg_entropy_bounds=(0.2, 0.5),
                  neg_mask_bounds=(0.03, 1.0), entropy_norm="released", logit_scale=100.0):
    """TDA, query by query: update the caches with the query, then classify it."""
    X, W = _unit(np.asarray(X, np.float64)), _unit(np.asarray(W, np.float64))
    n_classes = W.shape[0]
    pos, neg, out = {}, {}, []

    def update(cache, label, capacity, item):          # item = (entropy, feature, value)
        entries = cache.setdefault(label, [])
        if len(entries) < capacity:
            entries.append(item)
        elif item[0] < entries[-1][0]:
            entries[-1] = item
        entries.sort(key=lambda e: e[0])                # stable: equal entropies keep their order

    for x in X:
        z = logit_scale * W @ x
        p = _softmax(z)
        loss = -sum(pi * math.log(pi) for pi in p if pi > 0)
        h = loss / (math.log2(n_classes) if entropy_norm == "released" else math.log(n_classes))
        label = int(np.argmax(z))
        if pos_shot_capacity:
            update(pos, label, pos_shot_capacity, (loss, x, None))
        if neg_shot_capacity and neg_entropy_bounds[0] < h < neg_entropy_bounds[1]:
            mask = ((p > neg_mask_bounds[0]) & (p < neg_mask_bounds[1])).astype(np.float64)
            update(neg, label, neg_shot_capacity, (loss, x, mask))
        logits = z.copy()
        for c, entries in pos.items():
            for _, key, _ in entries:
                logits[c] += pos_alpha * math.exp(-pos_beta * (1.0 - key @ x))
        for entries in neg.values():
            for _, key, mask in entries:
                logits -= neg_alpha * math.exp(-neg_beta * (1.0 - key @ x)) * mask
        out.append(logits)
    return np.array(out)


def dmn_reference(X, W, *, memory_size=50, beta=5.5, memory_weight=1.0, logit_scale=100.0):
    """DMN-ZS, query by query: store the query in its pseudo-class's memory (swap out the entry of
    highest entropy when full and the query's is lower), then read every class's memory."""
    X, W = _unit(np.asarray(X, np.float64)), _unit(np.asarray(W, np.float64))
    n_classes = W.shape[0]
    memory = {c: [] for c in range(n_classes)}           # class -> [[feature, entropy], ...]
    out = []
    for x in X:
        p = _softmax(logit_scale * W @ x)
        loss = -float(np.sum(p * np.log(p + 1e-8)))
        label = int(np.argmax(p))
        slots = memory[label]
        if len(slots) < memory_size:
            slots.append([x, loss])
        else:
            worst = max(range(len(slots)), key=lambda j: slots[j][1])
            if loss < slots[worst][1]:
                slots[worst] = [x, loss]
        memory_logits = np.zeros(n_classes)
        for c in range(n_classes):
            read = np.zeros_like(x)
            for key in [s[0] for s in memory[c]] + [W[c]]:
                read += math.exp(-beta * (1.0 - key @ x)) * key
            memory_logits[c] = logit_scale * (read / np.linalg.norm(read)) @ x
        mixture = (p + memory_weight * _softmax(memory_logits)) / (1.0 + memory_weight)
        out.append(np.log(mixture))
    return np.array(out)


def _stream(n_classes=6, dim=16, n=120, seed=0):
    """CLIP-like text rows (close to each other) and a stream whose zero-shot entropies span
    confident to uncertain queries."""
    rng = np.random.default_rng(seed)
    common = rng.normal(size=dim)
    text = _unit(common + 0.05 * np.linalg.norm(common) * rng.normal(size=(n_classes, dim)))
    labels = rng.integers(0, n_classes, n)
    queries = _unit(text[labels] + 0.2 * rng.normal(size=(n, dim)))
    return text, queries, labels


def test_stream_exercises_every_rule():
    """The seeded stream of the equality tests is not degenerate: caches fill and swap entries,
    the negative band admits queries, and the negative masks mark more than one class."""
    text, queries, _ = _stream()
    model = TDA(device="cpu").fit(text_features=text)
    logits, summary = model.stream(queries)
    np.testing.assert_array_equal(logits, model.decision_function(queries))
    pos, neg = summary["positive"], summary["negative"]
    assert pos["evicted"] >= 5 and pos["classes_filled"] == 6
    assert neg["admitted"] >= 5 and neg["evicted"] >= 1
    dmn = DMNZeroShot(memory_size=4, device="cpu").fit(text_features=text)
    assert dmn.stream(queries)[1]["memory"]["evicted"] >= 5


@pytest.mark.parametrize("params", [
    {},
    {"pos_alpha": 1.0, "pos_beta": 7.0},                                # StanfordCars' published values
    {"entropy_norm": "unit", "neg_entropy_bounds": (0.3, 0.8), "neg_mask_bounds": (0.05, 0.9)},
    {"pos_shot_capacity": 0},
    {"neg_shot_capacity": 0, "pos_shot_capacity": 1},
])
def test_tda_equals_the_reference(params):
    text, queries, _ = _stream()
    expected = tda_reference(queries, text, **params)
    model = TDA(device="cpu", **params).fit(text_features=text)
    np.testing.assert_allclose(model.decision_function(queries), expected, rtol=1e-10, atol=1e-10)
    # blocks of a few queries read the same caches
    small = TDA(device="cpu", chunk_size=7, **params).fit(text_features=text)
    np.testing.assert_allclose(small.decision_function(queries), expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(model.predict(queries), expected.argmax(1))


@pytest.mark.parametrize("params", [{}, {"memory_size": 3, "beta": 2.0, "memory_weight": 0.3},
                                    {"memory_size": 1, "memory_weight": 10.0}])
def test_dmn_equals_the_reference(params):
    text, queries, _ = _stream()
    expected = dmn_reference(queries, text, **params)
    model = DMNZeroShot(device="cpu", **params).fit(text_features=text)
    np.testing.assert_allclose(model.decision_function(queries), expected, rtol=1e-10, atol=1e-10)
    small = DMNZeroShot(device="cpu", chunk_size=5, **params).fit(text_features=text)
    np.testing.assert_allclose(small.decision_function(queries), expected, rtol=1e-10, atol=1e-10)


def test_dmn_splits_blocks_when_one_class_takes_every_query(monkeypatch):
    """A degenerate stream (every query predicted as one class, as with a random backbone) makes
    one class's memory as wide as the block: the block is halved until it fits the budget."""
    import ssp.methods.dmn as dmn

    rng = np.random.default_rng(3)
    text = _unit(rng.normal(size=(5, 8)))
    queries = _unit(text[0] + 0.05 * rng.normal(size=(40, 8)))
    monkeypatch.setattr(dmn, "BLOCK_ELEMENTS", 5 * 12 * 12)
    model = DMNZeroShot(memory_size=30, device="cpu").fit(text_features=text)
    np.testing.assert_allclose(model.decision_function(queries),
                               dmn_reference(queries, text, memory_size=30), rtol=1e-10, atol=1e-10)


def test_each_stream_starts_from_empty_memories_and_follows_the_given_order():
    text, queries, _ = _stream(seed=4)
    for model, reference in ((TDA(device="cpu"), tda_reference), (DMNZeroShot(device="cpu"), dmn_reference)):
        model.fit(text_features=text)
        first = model.decision_function(queries)
        np.testing.assert_array_equal(model.decision_function(queries), first)   # no state carried over
        reversed_ = model.decision_function(queries[::-1])
        np.testing.assert_allclose(reversed_, reference(queries[::-1], text), rtol=1e-10, atol=1e-10)
        assert not np.allclose(reversed_[::-1], first)                          # the order matters


def test_without_memory_both_reduce_to_zero_shot():
    text, queries, _ = _stream(seed=2)
    zero_shot = 100.0 * queries @ text.T
    tda = TDA(pos_shot_capacity=0, neg_shot_capacity=0, device="cpu").fit(text_features=text)
    np.testing.assert_allclose(tda.decision_function(queries), zero_shot, rtol=1e-12)
    dmn = DMNZeroShot(memory_weight=0.0, device="cpu").fit(text_features=text)
    log_p = torch.log_softmax(torch.as_tensor(zero_shot), dim=1).numpy()
    np.testing.assert_allclose(dmn.decision_function(queries), log_p, rtol=1e-9, atol=1e-9)


def test_float32_and_torch_streams_agree_with_float64():
    text, queries, _ = _stream(seed=1)
    for cls in (TDA, DMNZeroShot):
        exact = cls(device="cpu").fit(text_features=text).decision_function(queries)
        single = cls(device="cpu").fit(text_features=torch.as_tensor(text, dtype=torch.float32))
        out = single.decision_function(torch.as_tensor(queries, dtype=torch.float32))
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
        np.testing.assert_allclose(out.numpy(), exact, rtol=1e-3, atol=1e-3)


def test_replay_keeps_the_lowest_keys_per_class():
    labels = np.array([0, 0, 1, 0, 0, 1, 0])
    keys = np.array([5.0, 3.0, 1.0, 4.0, 6.0, 0.5, 2.0])
    replay = replay_memory(labels, keys, capacity=2)
    # class 0: 0, 1 enter; 3 (4.0) swaps out 0 (5.0); 4 (6.0) is refused; 6 (2.0) swaps out 3 (4.0)
    assert replay.admitted.tolist() == [True, True, True, True, False, True, True]
    assert replay.evicted_at.tolist() == [3, 7, 7, 6, 7, 7, 7]
    assert replay.replaced.tolist() == [-1, -1, -1, 0, -1, -1, 3]
    assert replay.alive(4, 6).tolist() == [1, 2, 3, 5]
    eligible = np.array([True, False, True, True, True, True, True])
    assert replay_memory(labels, keys, 2, eligible).admitted.tolist() == [True, False, True, True, False,
                                                                          True, True]


@pytest.mark.parametrize("param,value,match", [
    ("pos_shot_capacity", -1, "pos_shot_capacity"), ("neg_entropy_bounds", (0.5, 0.2), "neg_entropy_bounds"),
    ("neg_mask_bounds", (0.1,), "neg_mask_bounds"), ("entropy_norm", "bits", "entropy_norm"),
    ("pos_beta", "x", "pos_beta"),
])
def test_tda_checks_its_parameters(param, value, match):
    text, _, _ = _stream()
    with pytest.raises(ValueError, match=match):
        TDA(**{param: value}).fit(text_features=text)


@pytest.mark.parametrize("param,value", [("memory_size", 0), ("memory_weight", -1.0), ("beta", None)])
def test_dmn_checks_its_parameters(param, value):
    text, _, _ = _stream()
    with pytest.raises(ValueError, match=param):
        DMNZeroShot(**{param: value}).fit(text_features=text)


def test_no_projector_and_no_patches():
    """SSP's projector is fitted on labelled support patches: nothing of it exists in a stream."""
    text, queries, _ = _stream()
    assert "projector" not in TDA().get_params() and "projector" not in DMNZeroShot().get_params()
    with pytest.raises(ValueError, match="no patch_features"):
        TDA().fit(queries[:6], np.arange(6), text_features=text, patch_features=queries[:6, None, :])
