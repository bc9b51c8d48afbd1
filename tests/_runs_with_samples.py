"""Run files with reliability metrics and per-sample files, written without running a method:
random logits through ssp.metrics, saved the way the run stage saves them."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ssp.metrics import reliability
from ssp.run.pipeline import with_class_names
from ssp.run.records import write_run

ACCURACY_SCALE = {"zero-shot": 1.0, "tip-adapter": 2.5, "gda": 4.0}


def write_fake_runs(folder: Path, *, datasets=("dtd", "eurosat"), methods=("zero-shot", "tip-adapter", "gda"),
                    shots=(1, 4), seeds=(1, 2), n_classes: int = 5, n_test: int = 120, n_val: int = 60) -> list[dict]:
    records = []
    for d_i, dataset in enumerate(datasets):
        for method in methods:
            for k in shots:
                for seed in seeds:
                    rng = np.random.default_rng([d_i, k, seed, len(method)])
                    scale = ACCURACY_SCALE.get(method, 1.0) * (1 + k / 8)

                    def logits(n):
                        y = rng.integers(0, n_classes, n)
                        z = rng.normal(size=(n, n_classes))
                        z[np.arange(n), y] += scale
                        return 3 * z, y

                    z, y = logits(n_test)
                    zv, yv = logits(n_val)
                    metrics, samples = reliability(z, y, zv, yv, alpha=0.1, seed=seed)
                    record = {
                        "dataset": dataset, "backbone": {"name": "RN50@openai", "model": "RN50"}, "method": method,
                        "shots": k, "seed": seed, "settings_key": f"{method[:3]}000000", "protocol_key": "p0",
                        "protocol_summary": "synthetic logits", "protocol": {"split_manifest_sha256": "ab" * 32},
                        "settings": {}, "hyperparameters": {}, "val_accuracy": 50.0,
                        "test_accuracy": float(np.mean(z.argmax(1) == y) * 100), "reliability": metrics,
                        "environment": {"ssp_version": "test", "device": "cpu"}, "timings": {"fit_s": 0.1},
                    }
                    # dtd's runs name their classes, eurosat's do not (a source that does not know them)
                    names = [f"{dataset} class {c}" for c in range(n_classes)] if dataset == "dtd" else None
                    write_run(folder, record, samples=with_class_names(samples, names))
                    records.append(record)
    return records
