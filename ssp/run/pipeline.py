"""The run loop: one source of features -> methods -> run records.

:func:`run_fewshot` runs every (shots, seed, method) of a config on a
:class:`~ssp.run.sources.FeatureSource` (images through a backbone, or a Tip-Adapter cache folder):
the same loop, the same run JSONs, the same resume rule for both. It writes run records only;
the report stage (:func:`ssp.report.tables.write_report`) reads them back into tables.
:func:`run_method` fits one method on a support set, chooses its hyper-parameters on the
validation split only and scores the test split once.
"""
from __future__ import annotations

import re
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ssp._io import jsonable
from ssp._utils.progress import step_progress
from ssp.features.types import Features
from ssp.methods.ssp.projector import SSPProjector
from ssp.methods.registry import parse_method
from ssp.methods.search import validation_search
from ssp.run.protocols import DEFAULT_PROTOCOL, get_protocol
from ssp.run.records import (
    MethodResult,
    RunLock,
    find_run,
    make_record,
    reliability_is_current,
    run_stub,
    write_run,
)
from ssp.run.sources import FeatureSource
from ssp.metrics import reliability

Echo = Callable[[str], None]


def accuracy(model, features: Features) -> float:
    """Top-1 accuracy in percent."""
    pred = torch.as_tensor(model.predict(features.image_features))
    return float((pred.cpu() == features.labels.cpu()).double().mean() * 100)


def logits_of(model, features: Features) -> np.ndarray:
    """The model's logits ``[M, C]`` on ``features`` as a float64 numpy array."""
    logits = model.decision_function(features.image_features)
    if isinstance(logits, torch.Tensor):
        logits = logits.detach().cpu().numpy()
    return np.asarray(logits, dtype=np.float64)


def evaluate(model, val: Features, test: Features, *, alpha: float = 0.1,
             n_bins: int = 15, seed: int = 0) -> tuple[float, dict, dict]:
    """``(test accuracy %, reliability metrics, per-sample and per-class arrays)`` of a fitted model:
    test logits computed once; the validation logits are the only calibration data; ``seed``: the
    run's seed (the APS randomisation, :func:`ssp.metrics.aps_uniforms`)."""
    test_logits = logits_of(model, test)
    labels = test.labels.cpu().numpy().astype(np.int64)
    prediction = test_logits.argmax(axis=1)
    test_acc = float(np.mean(prediction == labels) * 100)
    metrics, samples = reliability(test_logits, labels, logits_of(model, val),
                                   val.labels.cpu().numpy().astype(np.int64), alpha=alpha, n_bins=n_bins,
                                   seed=seed)
    return test_acc, metrics, samples


def with_class_names(samples: dict | None, names: list[str] | None) -> dict | None:
    """``samples`` with ``class_names`` ``[C']`` added: the first ``C'`` of ``names`` (``[C]``, label
    order), ``C'`` the length of its per-class arrays (a protocol scoring the first classes only,
    as base-to-new does, keeps their labels)."""
    if not samples or not names or "class_accuracy" not in samples:
        return samples
    n = len(samples["class_accuracy"])
    return {**samples, "class_names": np.array([str(c) for c in names[:n]])} if n <= len(names) else samples


def _ssp_details(model) -> dict:
    proj = model.projector_
    ranks = torch.as_tensor(proj.class_ranks_)
    return {"vision_rank": int(proj.vision_rank_), "class_rank_min": int(ranks.min()),
            "class_rank_max": int(ranks.max()), "class_rank_mean": float(ranks.double().mean()),
            "score_precision": getattr(proj, "score_precision_used_", None),
            "score_kernel": getattr(proj, "score_kernel_", None),
            "score_timings": jsonable(getattr(proj, "score_timings_", None))}


def training_details(model, *, views_given: bool) -> dict:
    """What a fine-tuned estimator learned from: per-epoch history (validation accuracy, training
    loss), the chosen epoch, the training time and the training inputs, from its fitted
    attributes ``history_``, ``best_epoch_``, ``train_time_s_``, ``training_inputs_`` when present."""
    out: dict = {}
    for attr, key in (("history_", "history"), ("best_epoch_", "best_epoch"), ("train_time_s_", "train_time_s"),
                      ("training_inputs_", "training_inputs"), ("seed", "seed")):
        value = getattr(model, attr, None)
        if value is not None:
            out[key] = jsonable(value)
    out.setdefault("training_inputs", "augmented views of the support images" if views_given else
                   "support features (cache keys: the mean of the augmented views); no per-view features given")
    return out


def run_method(method: str, cfg: dict, support: Features, val: Features, test: Features,
               text_features: torch.Tensor, device=None, seed: int | None = None,
               progress: bool = False, prompt_features: torch.Tensor | None = None) -> MethodResult:
    """Fit ``method`` (a name of :mod:`ssp.methods.registry`, optionally ``+ssp``) on the support set,
    choose its hyper-parameters on ``val``, score ``test`` once.

    ``seed`` seeds the training of fine-tuned methods (the few-shot seed in ``run_fewshot``);
    ``progress`` shows their training progress bar, and the progress of long searches (ProKeR's
    search, the linear probe's C path). Warnings raised while fitting and searching
    (e.g. a clamped ``n_channels``, a winner on the grid's edge) are returned in
    ``MethodResult.warnings`` (those of the chosen rank rule). ``prompt_features`` ``[C, P, D]``
    (each class's prompts encoded one by one) go to the methods that weigh prompts (TIMO); ``None``:
    they get the text classifier as the single prompt of each class.
    """
    spec, use_ssp = parse_method(method)
    n_features = support.image_features.shape[1]
    timings: dict[str, float] = {}
    candidates = []  # (val score, model, params, details, warnings)
    rank_rules = cfg["ssp"]["rank"] if use_ssp else [None]
    fit_kw: dict = {"patch_features": support.patch_features if use_ssp else None}
    extra: dict = {}
    if spec.uses_views:
        fit_kw["view_features"] = support.view_features
    if spec.uses_prompts:
        fit_kw["prompt_features"] = prompt_features
    if spec.fine_tuned:
        fit_kw.update(val_features=val.image_features, val_labels=val.labels,
                      view_features=support.view_features)
        extra["progress"] = progress
        if seed is not None:
            extra["seed"] = seed
    for rank in rank_rules:
        projector = None
        if use_ssp:
            s = cfg["ssp"]
            projector = SSPProjector(patch_top_k=s["patch_top_k"], class_top_k=s["class_top_k"],
                                     global_weight=s["global_weight"], rank=rank,
                                     score_precision=s.get("score_precision", "auto"), device=device)
        model = spec.build(cfg, n_features=n_features, projector=projector, device=device, **extra)
        # The zero-shot term of "vision"/"reference" routing is plain CLIP, so zero-shot+ssp is "paper" only.
        routings = (cfg["ssp"]["routing"] if spec.search_axes else ["paper"]) if use_ssp else None
        grid = spec.grid(cfg)
        if grid is not None and routings:
            grid["routing"] = list(routings)
        details: dict = {}
        # warnings of fit and search (a clamped n_channels, a winner on the grid's edge) go into the record
        with warnings.catch_warnings(record=True) as caught, step_progress(progress):
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            model.fit(support.image_features, support.labels, text_features=text_features, **fit_kw)
            timings["fit_s"] = timings.get("fit_s", 0.0) + time.perf_counter() - t0
            t0 = time.perf_counter()
            if grid is None:
                score, params = accuracy(model, val), ({"routing": "paper"} if use_ssp else {})
                if use_ssp:
                    model.set_params(routing="paper")
            else:
                result = validation_search(model, val.image_features, val.labels, grid=grid)
                score, params = float(result.best_accuracy_pct_), dict(result.best_params_)
            timings["search_s"] = timings.get("search_s", 0.0) + time.perf_counter() - t0
        if use_ssp:
            params["rank"] = rank
            details = _ssp_details(model)
        if hasattr(model, "channels_"):
            details["n_channels"] = len(model.channels_)
        if spec.fine_tuned or spec.uses_views:
            details["training"] = training_details(model, views_given=fit_kw.get("view_features") is not None)
        if callable(getattr(model, "fit_details", None)):  # what the method reports about its fit
            details.update(jsonable(model.fit_details()))
        candidates.append((score, model, params, details, list(dict.fromkeys(str(w.message) for w in caught))))
    # first maximum over rank rules wins (ties -> earlier candidate in the config's list)
    best = max(range(len(candidates)), key=lambda i: (candidates[i][0], -i))
    score, model, params, details, fit_warnings = candidates[best]
    if use_ssp and len(candidates) > 1:
        details["val_accuracy_per_rank_rule"] = {str(c[2]["rank"]): c[0] for c in candidates}
    t0 = time.perf_counter()
    m = cfg.get("metrics") or {}
    test_acc, metrics, samples = evaluate(model, val, test, alpha=m.get("conformal_alpha", 0.1),
                                          n_bins=m.get("calibration_bins", 15), seed=0 if seed is None else seed)
    timings["test_s"] = time.perf_counter() - t0
    return MethodResult(method, params, score, test_acc, timings, details, fit_warnings, model=model,
                        reliability=metrics, samples=samples)


def _with_prompts(prompts: torch.Tensor) -> Callable[..., MethodResult]:
    """:func:`run_method` that also passes the per-prompt text features ``[C, P, D]``; a protocol
    fitting on the first ``C' < C`` classes (base-to-new) gets their first ``C'`` rows."""

    def fit_one(method, cfg, support, val, test, text_features, **kw):
        return run_method(method, cfg, support, val, test, text_features,
                          prompt_features=prompts[: int(text_features.shape[0])], **kw)

    return fit_one


def fmt_params(params: dict) -> str:
    """Hyper-parameters for display: ``beta=2.86 alpha=1.2 routing=paper``."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()) or "-"


def echo_result(echo: Echo, record: dict, *, reused: bool = False) -> None:
    line = get_protocol(record.get("protocol_name", DEFAULT_PROTOCOL)).result_line
    echo(f"[ssp] {record['dataset']} {record['shots']}-shot seed {record['seed']} {record['method']:<16} "
         f"{line(record)}  "
         f"{fmt_params(record.get('hyperparameters', {}))}" + ("  (done before: reused)" if reused else ""))


_EDGE = re.compile(r"along (?P<a>\w+) is reached at the (?P<s>largest|smallest)|"
                   r"the chosen (?P<a2>\w+)=\S+ ties with the (?P<s2>largest|smallest)")


def warning_kind(message: str) -> str:
    """What a warning is about, without its numbers or the method that raised it: a search
    optimum on a grid's edge is ``"search optimum at the largest alpha of the grid"``; any other
    message is itself with every number replaced by ``#``."""
    m = _EDGE.search(message)
    if m:
        return f"search optimum at the {m['s'] or m['s2']} {m['a'] or m['a2']} of the grid"
    return re.sub(r"-?\d+(\.\d+)?(e-?\d+)?", "#", message)


class WarningLog:
    """Prints each kind of warning (:func:`warning_kind`) once for the whole command, with the
    method it first came from, counts the rest, and ends with one line per repeated kind naming
    the methods it came from: a 28-run demo prints a handful of lines, not one per method."""

    def __init__(self, echo: Echo) -> None:
        self.echo = echo
        self.kinds: dict[str, dict[str, int]] = {}

    def add(self, method: str, messages: list[str]) -> None:
        for msg in messages:
            by_method = self.kinds.setdefault(warning_kind(msg), {})
            if not by_method:
                self.echo(f"[ssp] warning ({method}): {msg}")
            by_method[method] = by_method.get(method, 0) + 1

    def summary(self) -> None:
        total = sum(n for by_method in self.kinds.values() for n in by_method.values())
        if total <= len(self.kinds):
            return
        self.echo(f"[ssp] {total} warning(s) in all, each kind shown once above (every run JSON lists its own "
                  "under 'warnings'):")
        for kind, by_method in self.kinds.items():
            n = sum(by_method.values())
            if n > 1:
                label = kind if len(kind) <= 70 else kind[:67] + "..."
                self.echo(f"  {n} x {label}: " + ", ".join(f"{m} {c}" for m, c in by_method.items()))


class Interrupted(KeyboardInterrupt):
    """An interrupted :func:`run_fewshot`: ``completed`` run files were written before it."""

    def __init__(self, completed: int, signum: int | None = None) -> None:
        super().__init__(f"interrupted after {completed} run(s)")
        self.completed, self.signum = completed, signum


def plan_runs(cfg: dict, source: FeatureSource, methods: list[str],
              protocol: str = DEFAULT_PROTOCOL) -> dict[tuple[int, int, str], dict]:
    """``(shots, seed, method) -> run stub`` (coordinates + settings key) of every run of ``cfg``
    under ``protocol`` (a name of :mod:`ssp.run.protocols`; its settings join the protocol part)."""
    common = source.common_settings()
    extra = get_protocol(protocol).settings
    if extra:
        common = {**common, "protocol": {**common.get("protocol", {}), "evaluation": extra}}
    return {(k, s, m): run_stub(dataset=source.dataset, backbone=source.label, method=m, shots=k, seed=s,
                                common=common, cfg=cfg)
            for k in cfg["shots"] for s in cfg["seeds"] for m in methods}


def run_fewshot(cfg: dict, source: FeatureSource, *, output_dir: str | Path, echo: Echo = print,
                resume: bool = True, progress: bool = True, wait_for_others: float = 3600.0,
                protocol: str = DEFAULT_PROTOCOL) -> list[dict]:
    """Run every (shots, seed, method) of ``cfg`` on ``source`` under ``protocol`` (a name of
    :mod:`ssp.run.protocols`: ``fewshot``, ``base2new``, ...); write one JSON per run.

    ``resume``: a run whose JSON exists under ``output_dir`` with the same settings is reused, not
    recomputed (nothing is extracted for a (shots, seed) whose runs all exist); ``False`` runs
    everything again and replaces those files. A run another process is running (a live lock file,
    :class:`~ssp.run.records.RunLock`) is left to it; its result is read back once written
    (waiting at most ``wait_for_others`` seconds), so parallel invocations share the work.
    On an interrupt, :class:`Interrupted` says how many run files this call completed.

    Returns the records of every run of ``cfg`` (``[]`` on a torchrun rank other than 0); the
    tables are the report stage's (:func:`ssp.report.tables.write_report` on ``output_dir``).
    """
    output_dir = Path(output_dir)
    spec = get_protocol(protocol)
    if spec.shots is not None and list(cfg["shots"]) != list(spec.shots):
        raise ValueError(f"protocol {spec.name} runs with shots {list(spec.shots)}, the config says {cfg['shots']}: "
                         f"pass the config through get_protocol({spec.name!r}).configure(cfg)")
    methods, reasons = spec.runnable(list(cfg["methods"]))
    methods, more = source.runnable(methods) if methods else ([], [])
    reasons += more
    for reason in reasons:
        echo(f"[ssp] {reason}")
    if not methods:
        raise ValueError(f"nothing to run on {source.dataset}: " + "; ".join(reasons))
    stubs = plan_runs(cfg, source, methods, protocol)
    found = {k: r for k, r in ((k, find_run(output_dir, st, outdated_ok=True)) for k, st in stubs.items())
             if r is not None} if resume else {}
    done = {k: r for k, r in found.items() if reliability_is_current(r)}
    if len(found) > len(done):
        echo(f"[ssp] {len(found) - len(done)} run(s) under {output_dir} hold reliability metrics of an older "
             "definition (deterministic APS): running them again, their files are replaced")
    records: list[dict] = []
    completed = 0
    try:
        if len(done) == len(stubs):
            echo(f"[ssp] {source.dataset} ({source.label}): all {len(stubs)} runs already done under "
                 f"{output_dir}; nothing to do")
            for key in stubs:
                echo_result(echo, done[key], reused=True)
            return [done[k] for k in stubs]
        if done:
            echo(f"[ssp] {len(done)} of {len(stubs)} runs already done under {output_dir} (same settings): reused")
        if not source.open(echo, support_classes=spec.support_classes):
            return []
        text = source.text_classifier()
        if spec.needs_text and text is None:
            raise ValueError(f"protocol {spec.name} needs a text classifier, and {source.dataset} has none")
        prompts = source.prompt_features() if any(parse_method(m)[0].uses_prompts for m in methods) else None
        fields = source.record_fields()
        names = source.class_names()
        fit_one = run_method if prompts is None else _with_prompts(prompts)
        log = WarningLog(echo)
        waiting: dict[tuple[int, int, str], RunLock] = {}
        for shots in cfg["shots"]:
            for seed in cfg["seeds"]:
                todo = []
                for m in methods:
                    key = (shots, seed, m)
                    if key in done:
                        records.append(done[key])
                        echo_result(echo, done[key], reused=True)
                        continue
                    lock = RunLock(output_dir, stubs[key])
                    if lock.acquire():
                        todo.append((m, lock))
                    else:
                        waiting[key] = lock
                        echo(f"[ssp] {shots}-shot seed {seed} {m}: another process is running it; its result "
                             "will be read back")
                if not todo:
                    continue
                try:
                    split = source.split(shots, seed, echo)
                    log.add("sampling", split.warnings)
                    for method, lock in todo:
                        outcome = spec.evaluate(method, cfg, split, text, run_method=fit_one,
                                                device=source.device, seed=seed, progress=progress)
                        res = outcome.result
                        log.add(method, res.warnings)
                        record = make_record(stubs[(shots, seed, method)], res, **fields,
                                             protocol=split.protocol, seeds=split.seeds, timings=split.timings,
                                             warnings=split.warnings + res.warnings, cfg=source.recorded_config(cfg),
                                             device=source.device,
                                             extra={**split.extra, **spec.record_fields(), **outcome.fields})
                        write_run(output_dir, record, samples=with_class_names(res.samples, names))
                        lock.release()
                        completed += 1
                        records.append(record)
                        echo_result(echo, record)
                finally:
                    for _, lock in todo:
                        lock.release()
        records += _read_back(output_dir, stubs, waiting, wait_for_others, echo)
        log.summary()
        source.close(echo)
    except KeyboardInterrupt as err:
        raise Interrupted(completed, getattr(err, "signum", None)) from err
    return records


def _read_back(output_dir: Path, stubs: dict, waiting: dict, timeout: float, echo: Echo) -> list[dict]:
    """The runs other processes held locks on, once their files exist (polling)."""
    out = []
    deadline = time.monotonic() + timeout
    for key, lock in waiting.items():
        while True:
            record = find_run(output_dir, stubs[key], outdated_ok=True)
            if record is not None:
                out.append(record)
                echo_result(echo, record, reused=True)
                break
            if not lock.locked_by_other():
                raise RuntimeError(f"run {key} was being run by another process that stopped without writing "
                                   f"its result ({lock.path}); rerun the same command to run it here")
            if time.monotonic() > deadline:
                raise RuntimeError(f"waited {timeout:.0f} s for another process to finish run {key} "
                                   f"({lock.path}); rerun later")
            time.sleep(2.0)
    return out
