"""Evaluation protocols: one table that the CLI (``--protocol``), the run loop and the tests read.

A protocol decides what one run does with the features of one (shots, seed): which classes and
samples a method is fitted and searched on, what is scored, and which results its run JSON holds.

    fewshot    (default) fit on the support set of every class, choose hyper-parameters on the
               validation split, score the test split once (``test_accuracy``)
    base2new   the CoCoOp protocol: fit and search on the base half of the classes (CoOp's
               ``subsample_classes``: the first ceil(C/2) labels), score the test images of base
               classes among base classes and those of the unseen new classes among new classes;
               ``base_accuracy``, ``new_accuracy``, ``harmonic_mean``

    test-time  no labelled shots: the test split streamed once in a seeded order (recorded), the
               test-time methods (TDA, DMN-ZS) adapting along it with their published per-dataset
               hyper-parameters, zero-shot CLIP as the baseline row (``test_accuracy``)

How a protocol plugs in::

    register_protocol(Protocol(name="test-time", title="...", evaluate=my_evaluate,
                               settings={"name": "test-time", ...}, table_metrics=(...), ...))

* **What it gets.** ``evaluate(method, cfg, split, text, *, run_method, device, seed, progress)``, called once
  per (shots, seed, method) by :func:`ssp.run.pipeline.run_fewshot`: the method name (``"gda"``,
  ``"ape+ssp"``), the merged config, the source's :class:`~ssp.run.sources.Split` of that (shots,
  seed) (``support`` / ``val`` / ``test`` :class:`~ssp.features.types.Features`, every class, labels
  ``0..C-1``; ``protocol`` and ``seeds`` dicts recorded as they are) and the ``[C, D]`` text
  classifier; ``run_method`` (:func:`ssp.run.pipeline.run_method`, passed in) fits, searches and
  scores one method on given features and returns the fitted model too (``result.model``).
* **What it returns.** An :class:`Outcome`: ``result`` (a
  :class:`~ssp.run.pipeline.MethodResult`: ``hyperparameters``, ``val_accuracy``,
  ``test_accuracy``, timings, details, warnings: the record's common fields) and ``fields``, more
  top-level run-JSON fields (for base2new: ``base_accuracy``, ``new_accuracy``,
  ``harmonic_mean``, ``class_split``, ``new_classes``).
* **Settings.** ``settings`` is merged into the ``protocol`` part of every run's settings (so its
  runs get their own settings key and never mix with few-shot runs); the default protocol adds
  nothing, so few-shot settings keys are those of earlier versions.
* **Records and tables.** Every record of a protocol other than ``fewshot`` holds
  ``protocol_name`` and ``table_metrics`` (the record fields its result tables show, in order);
  the report reads those, not this table. ``result_line(record)`` is the one-line console summary.
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ssp._lazy import torch
from ssp.methods.registry import parse_method
from ssp.metrics import transferred_reliability, uncalibrated_reliability
from ssp.run.records import MethodResult

__all__ = ["Protocol", "Outcome", "register_protocol", "get_protocol", "protocol_names", "PROTOCOLS",
           "base_new_split", "harmonic_mean", "stream_order", "DEFAULT_PROTOCOL"]

DEFAULT_PROTOCOL = "fewshot"


@dataclass
class Outcome:
    """What a protocol's ``evaluate`` returns for one run."""

    result: Any                              # ssp.run.pipeline.MethodResult
    fields: dict = field(default_factory=dict)   # more top-level run-JSON fields


@dataclass(frozen=True)
class Protocol:
    """One protocol of the table (module docstring).

    Attributes:
        name: the ``--protocol`` value and the records' ``protocol_name``.
        title: one line for ``--help`` and the docs.
        evaluate: ``(method, cfg, split, text, *, run_method, device, seed, progress) -> Outcome``.
        settings: merged into every run's ``protocol`` settings (empty for the default protocol).
        table_metrics: record fields the report tables show (``("test_accuracy",)`` by default).
        result_line: ``record -> str``, the results part of the console line of a run.
        needs_text: the protocol reads the text classifier (base2new: the new classes' text).
        refusal: ``method -> reason or None``: why a method cannot run under this protocol (the
            run loop skips it with the reason; default: test-time methods need ``test-time``).
        shots: the shot counts this protocol runs, whatever the config says (test-time: ``(0,)``);
            ``None``: the config's.
        default_methods: the methods run when none are named (``None``: the config's list).
        compare_published: the report puts published numbers of the same shot count beside
            these runs (recorded in each run JSON as ``compare_published``).
        support_classes: ``C -> n``: only the first ``n`` classes need support and validation
            images (base-to-new: the base half), so a source extracts no others; ``None``: all.
    """

    name: str
    title: str
    evaluate: Callable[..., Outcome]
    settings: dict = field(default_factory=dict)
    table_metrics: tuple[str, ...] = ("test_accuracy",)
    result_line: Callable[[dict], str] | None = None
    needs_text: bool = False
    refusal: Callable[[str], str | None] | None = None
    shots: tuple[int, ...] | None = None
    default_methods: tuple[str, ...] | None = None
    compare_published: bool = False
    support_classes: Callable[[int], int] | None = None

    def record_fields(self) -> dict:
        """Fields every record of this protocol holds (none for the default protocol)."""
        if self.name == DEFAULT_PROTOCOL:
            return {}
        return {"protocol_name": self.name, "table_metrics": list(self.table_metrics),
                **({"compare_published": True} if self.compare_published else {})}

    def configure(self, cfg: dict, *, shots_given: bool = False, methods_given: bool = False) -> dict:
        """``cfg`` with this protocol's fixed shot counts and, when no methods were named
        (``methods_given`` False), its default methods. Shot counts named on the command line
        (``shots_given``) that differ from the protocol's are refused."""
        cfg = dict(cfg)
        if self.shots is not None:
            if shots_given and list(cfg["shots"]) != list(self.shots):
                raise ValueError(f"--protocol {self.name} runs with {list(self.shots)} labelled shots, not "
                                 f"--shots {cfg['shots']}; drop --shots")
            cfg["shots"] = list(self.shots)
        if self.default_methods is not None and not methods_given:
            cfg["methods"] = list(self.default_methods)
        return cfg

    def runnable(self, methods: list[str]) -> tuple[list[str], list[str]]:
        """``(methods that can run under this protocol, one-line reasons for the others)``."""
        refuse = self.refusal or _refuse_test_time_methods
        run, reasons = [], []
        for m in methods:
            reason = refuse(m)
            if reason is None:
                run.append(m)
            else:
                reasons.append(f"skipping {m}: {reason}")
        return run, reasons


def _refuse_test_time_methods(method: str) -> str | None:
    if parse_method(method)[0].test_time:
        return (f"{method} adapts on the test stream without labelled shots; run it with --protocol test-time "
                "(docs/protocol.md)")
    return None


PROTOCOLS: dict[str, Protocol] = {}


def register_protocol(protocol: Protocol) -> Protocol:
    """Add ``protocol`` to the table (its name must be new)."""
    if protocol.name in PROTOCOLS:
        raise ValueError(f"protocol {protocol.name!r} is already registered")
    PROTOCOLS[protocol.name] = protocol
    return protocol


def get_protocol(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)}") from None


def protocol_names() -> tuple[str, ...]:
    return tuple(PROTOCOLS)


# ------------------------------------------------------------------------------------- fewshot


def _evaluate_fewshot(method: str, cfg: dict, split, text: torch.Tensor, *, run_method: Callable, device=None,
                      seed=None, progress: bool = False) -> Outcome:
    result = run_method(method, cfg, split.support, split.val, split.test, text, device=device, seed=seed,
                        progress=progress)
    fields = score_targets(result.model, getattr(split, "targets", None) or {})
    result.model = None
    return Outcome(result, fields)


def score_targets(model, targets: dict) -> dict:
    """Distribution shift (``--eval-on``): each target's test split scored once by the model fitted
    and searched on the source, with the logits restricted to the target's classes (mapped by class
    id), so a class outside the target is never predicted. Returns the run-JSON fields:
    ``eval_on`` (per target: accuracy, counts) and ``<target>_accuracy``, and ``table_metrics``."""
    if not targets:
        return {}
    out: dict = {"eval_on": {}}
    for name, (features, source_index) in targets.items():
        t0 = time.perf_counter()
        logits = torch.as_tensor(model.decision_function(features.image_features))
        pred = logits[:, source_index.to(logits.device)].argmax(1).cpu()
        acc = float((pred == features.labels.cpu()).double().mean() * 100)
        out["eval_on"][name] = {"accuracy": round(acc, 6), "n_test": int(features.labels.numel()),
                                "n_classes": int(source_index.numel()),
                                "classes": "mapped onto the source's by class id; logits restricted to them",
                                "test_s": round(time.perf_counter() - t0, 4)}
        out[f"{name}_accuracy"] = round(acc, 6)
    out["table_metrics"] = ["test_accuracy"] + [f"{name}_accuracy" for name in targets]
    return out


def _fewshot_line(record: dict) -> str:
    shift = "".join(f"  {name} {r['accuracy']:6.2f}" for name, r in (record.get("eval_on") or {}).items())
    return f"val {record['val_accuracy']:6.2f}  test {record['test_accuracy']:6.2f}" + shift


register_protocol(Protocol(
    name="fewshot", title="few-shot: fit on K shots of every class, search on validation, score the test split once",
    evaluate=_evaluate_fewshot, result_line=_fewshot_line))


# ------------------------------------------------------------------------------------ base2new


def harmonic_mean(base: float, new: float) -> float:
    """``2 b n / (b + n)`` (0 when both are 0)."""
    return 0.0 if base + new == 0 else 2.0 * base * new / (base + new)


def base_new_split(n_classes: int) -> tuple[int, int]:
    """``(n_base, n_new)``: CoOp's ``subsample_classes``: the first ``ceil(C / 2)`` labels are base."""
    if n_classes < 2:
        raise ValueError(f"base-to-new needs at least 2 classes, got {n_classes}")
    n_base = math.ceil(n_classes / 2)
    return n_base, n_classes - n_base


def _restrict(features, low: int, high: int):
    """The rows of ``features`` with a label in ``[low, high)``, relabelled from 0 (order kept)."""
    rows = torch.nonzero((features.labels >= low) & (features.labels < high))[:, 0]
    out = features.subset(rows.to(features.labels.device))
    out.labels = out.labels - low
    return out


def _evaluate_base2new(method: str, cfg: dict, split, text: torch.Tensor, *, run_method: Callable, device=None,
                       seed=None, progress: bool = False) -> Outcome:
    n_classes = int(text.shape[0])
    n_base, n_new = base_new_split(n_classes)
    support, val, test_base = (_restrict(f, 0, n_base) for f in (split.support, split.val, split.test))
    test_new = _restrict(split.test, n_base, n_classes)
    for name, part in (("support", support), ("validation", val), ("test (base)", test_base),
                       ("test (new)", test_new)):
        if part.labels.numel() == 0:
            raise ValueError(f"base-to-new: the {name} split has no sample of its classes")
    result = run_method(method, cfg, support, val, test_base, text[:n_base], device=device, seed=seed,
                        progress=progress)
    model = result.model
    result.model = None
    t0 = time.perf_counter()
    logits = torch.as_tensor(model.new_class_logits(test_new.image_features, text[n_base:]))
    new_acc = float((logits.argmax(1).cpu() == test_new.labels.cpu()).double().mean() * 100)
    new_reliability = None
    if result.reliability is not None:   # the new classes' calibration, with the base validation's temperature

        m = cfg.get("metrics") or {}
        new_reliability = transferred_reliability(
            logits.detach().cpu().double().numpy(), test_new.labels.cpu().numpy().astype("int64"),
            temperature=result.reliability["temperature"], n_bins=m.get("calibration_bins", 15))
    result.timings["test_new_s"] = time.perf_counter() - t0
    base_acc = result.test_accuracy
    _, use_ssp = parse_method(method)
    rule = model.new_class_rule
    fields = {
        "base_accuracy": round(base_acc, 6), "new_accuracy": round(new_acc, 6),
        "harmonic_mean": round(harmonic_mean(base_acc, new_acc), 6),
        **({"reliability_new": new_reliability} if new_reliability is not None else {}),
        "class_split": {"rule": "CoOp subsample_classes: the first ceil(C/2) labels are base, the rest new; "
                                "each half relabelled from 0",
                        "n_classes": n_classes, "base": [0, n_base], "new": [n_base, n_classes],
                        "n_support": int(support.labels.numel()), "n_val": int(val.labels.numel()),
                        "n_test_base": int(test_base.labels.numel()), "n_test_new": int(test_new.labels.numel())},
        "new_classes": {"rule": rule, "ssp": use_ssp, "hyperparameters": "those chosen on base validation"},
        **({"new_class_details": model.new_class_details_} if getattr(model, "new_class_details_", None) else {}),
    }
    return Outcome(result, fields)


def _base2new_line(record: dict) -> str:
    return (f"val {record['val_accuracy']:6.2f}  base {record['base_accuracy']:6.2f}  "
            f"new {record['new_accuracy']:6.2f}  HM {record['harmonic_mean']:6.2f}")


register_protocol(Protocol(
    name="base2new", title="base-to-new (CoCoOp): fit and search on the base half of the classes, score base "
                           "and unseen new classes separately, harmonic mean",
    evaluate=_evaluate_base2new, settings={"name": "base2new", "split": "coop-subsample-classes"},
    table_metrics=("base_accuracy", "new_accuracy", "harmonic_mean"), result_line=_base2new_line,
    needs_text=True, support_classes=lambda n_classes: base_new_split(n_classes)[0]))


# ----------------------------------------------------------------------------------- test-time

_STAGE_STREAM = 4  # the random stream of the test-time order (1: validation, 2: test-from-val)


def stream_order(n: int, seed: int) -> tuple[np.ndarray, dict]:
    """The seeded order in which the test-time protocol streams ``n`` test samples, and its
    record: the rule, the seed and the sha256 of the order (``int64`` little-endian bytes)."""
    order = np.random.default_rng([int(seed), _STAGE_STREAM]).permutation(int(n))
    digest = hashlib.sha256(order.astype("<i8").tobytes()).hexdigest()
    return order, {"rule": f"numpy.random.default_rng([seed, {_STAGE_STREAM}]).permutation(n_test)",
                   "seed": int(seed), "n": int(n), "sha256": digest,
                   "note": "the test split (in the source's order) is streamed in this order, once, by every method"}


def _refuse_needing_shots(method: str) -> str | None:
    spec, use_ssp = parse_method(method)
    if use_ssp:
        return ("SSP's projector is fitted on labelled support patches (its vision and language subspaces); "
                "the test-time protocol has no labelled image, so nothing of SSP carries over (docs/protocol.md)")
    if not (spec.test_time or spec.name == "zero-shot"):
        return (f"{method} learns from labelled shots, and the test-time protocol has none; run it with "
                "--protocol fewshot")
    return None


def _evaluate_test_time(method: str, cfg: dict, split, text: torch.Tensor, *, run_method: Callable, device=None,
                        seed=None, progress: bool = False) -> Outcome:
    import warnings


    spec, _ = parse_method(method)
    reason = _refuse_needing_shots(method)
    if reason is not None:
        raise ValueError(reason)
    test = split.test
    order, record = stream_order(int(test.labels.numel()), 0 if seed is None else seed)
    stream = test.subset(torch.as_tensor(order, dtype=torch.long, device=test.labels.device))
    n_features = int(stream.image_features.shape[1])
    model = spec.build(cfg, n_features=n_features, device=device)
    details: dict = {"stream_order": record}
    timings: dict = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        model.fit(text_features=text)
        timings["fit_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if spec.test_time:
            logits, details["memory"] = model.stream(stream.image_features)
        else:
            logits = model.decision_function(stream.image_features)
        timings["test_s"] = time.perf_counter() - t0
    logits = np.asarray(torch.as_tensor(logits).detach().cpu(), dtype=np.float64)
    labels = stream.labels.cpu().numpy().astype(np.int64)
    accuracy = float(np.mean(logits.argmax(1) == labels) * 100)
    # raw calibration and selective prediction need no labels to fit; temperature and conformal sets do
    m = cfg.get("metrics") or {}
    metrics, samples = uncalibrated_reliability(logits, labels, n_bins=m.get("calibration_bins", 15))
    params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.constructor_params(cfg, n_features).items()}

    # no validation accuracy: nothing is searched (the published hyper-parameters are used)
    result = MethodResult(method, params, None, accuracy, timings, details,
                          list(dict.fromkeys(str(w.message) for w in caught)), reliability=metrics, samples=samples)
    return Outcome(result, {"stream_order": record})


def _test_time_line(record: dict) -> str:
    return f"stream {record['test_accuracy']:6.2f}  (no labels, order sha256 {record['stream_order']['sha256'][:12]})"


register_protocol(Protocol(
    name="test-time", title="test-time adaptation: no labelled shots; the test split streamed once in a seeded "
                            "order (recorded); tda, dmn-zs with their published hyper-parameters, zero-shot as baseline",
    evaluate=_evaluate_test_time, settings={"name": "test-time", "stream": "numpy default_rng([seed, 4])"},
    result_line=_test_time_line, needs_text=True, refusal=_refuse_needing_shots, shots=(0,),
    default_methods=("zero-shot", "tda", "dmn-zs"), compare_published=True))
