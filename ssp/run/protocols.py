"""Evaluation protocols: one table that the CLI (``--protocol``), the run loop and the tests read.

A protocol decides what one run does with the features of one (shots, seed): which classes and
samples a method is fitted and searched on, what is scored, and which results its run JSON holds.

    fewshot    (default) fit on the support set of every class, choose hyper-parameters on the
               validation split, score the test split once (``test_accuracy``)
    base2new   the CoCoOp protocol: fit and search on the base half of the classes (CoOp's
               ``subsample_classes``: the first ceil(C/2) labels), score the test images of base
               classes among base classes and those of the unseen new classes among new classes;
               ``base_accuracy``, ``new_accuracy``, ``harmonic_mean``

How a protocol plugs in (e.g. a test-time protocol: no labelled shots, the test split streamed in a
seeded order)::

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

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ssp._lazy import torch
from ssp.methods.registry import parse_method

__all__ = ["Protocol", "Outcome", "register_protocol", "get_protocol", "protocol_names", "PROTOCOLS",
           "base_new_split", "harmonic_mean", "DEFAULT_PROTOCOL"]

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
    """

    name: str
    title: str
    evaluate: Callable[..., Outcome]
    settings: dict = field(default_factory=dict)
    table_metrics: tuple[str, ...] = ("test_accuracy",)
    result_line: Callable[[dict], str] | None = None
    needs_text: bool = False

    def record_fields(self) -> dict:
        """Fields every record of this protocol holds (none for the default protocol)."""
        if self.name == DEFAULT_PROTOCOL:
            return {}
        return {"protocol_name": self.name, "table_metrics": list(self.table_metrics)}


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
    result.model = None
    return Outcome(result)


def _fewshot_line(record: dict) -> str:
    return f"val {record['val_accuracy']:6.2f}  test {record['test_accuracy']:6.2f}"


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
    result.timings["test_new_s"] = time.perf_counter() - t0
    base_acc = result.test_accuracy
    _, use_ssp = parse_method(method)
    rule = model.new_class_rule
    fields = {
        "base_accuracy": round(base_acc, 6), "new_accuracy": round(new_acc, 6),
        "harmonic_mean": round(harmonic_mean(base_acc, new_acc), 6),
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
    needs_text=True))
