"""Throughput of feature extraction: what ``ssp.features`` adds on top of the bare model.

For each model (random init: no pretrained weights are needed for timing) it prints

* ``bare encode_image``     -- open_clip's ``model.encode_image`` on pre-decoded, pre-transformed
  batches (the model alone),
* ``encode_images``         -- ``Backbone.encode_images`` (global + local) on the same batches,
* ``extract_features``      -- the whole pipeline from JPEG files (decode, transform, DataLoader
  workers, forward, normalisation), global + local, one eval view,
* the cache miss / cache hit times of ``cached_features`` and the size of the cache file.

Images: the real DTD images in ``$SSP_DATA_ROOT/coop/dtd`` (default ``../shared/data``) when
present, else generated JPEGs. Example::

    python benchmarks/bench_extraction.py --model RN50 ViT-B-32 --images 128 --batch-size 32
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's ssp, not an installed one

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def find_images(n: int, workdir: Path) -> tuple[list, str]:
    from ssp.data import Sample

    root = Path(os.environ.get("SSP_DATA_ROOT", REPO.parent / "shared" / "data")) / "coop" / "dtd"
    split = root / "split_zhou_DescribableTextures.json"
    if split.is_file():
        content = json.loads(split.read_text())
        items = content["train"] + content["val"] + content["test"]
        samples = [Sample(str(root / "images" / rel), int(lab), name) for rel, lab, name in items]
        if len(samples) >= n:
            return samples[:n], f"real DTD images from {root}"
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        h, w = int(rng.integers(300, 640)), int(rng.integers(300, 640))
        # smooth random images compress like photos (pure noise JPEGs decode unusually slowly)
        small = rng.integers(0, 256, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
        path = workdir / f"img{i:05d}.jpg"
        img.save(path, quality=90)
        samples.append(Sample(str(path), i % 10, f"class{i % 10}"))
    return samples, "generated JPEGs"


def timed(fn, repeats: int = 1) -> float:
    """Best wall time of ``repeats`` calls (seconds), synchronising CUDA."""
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_model(name: str, samples: list, args: argparse.Namespace, cache_dir: Path) -> dict:
    from ssp.backbone.model import load_backbone
    from ssp.data import load_image
    from ssp.features.extract import extract_features
    from ssp.features.store import FeatureStore, cached_features

    backbone = load_backbone(name, pretrained=None, device=args.device, precision=args.precision)
    device = torch.device(backbone.device)
    bs = args.batch_size or (256 if device.type == "cuda" else 64)
    n = len(samples)

    # Pre-decoded, pre-transformed batches for the model-only figures.
    images = torch.stack([backbone.preprocess(load_image(s.path)) for s in samples])
    batches = [images[i:i + bs].to(device) for i in range(0, n, bs)]
    model = backbone.model
    with torch.inference_mode():
        model.encode_image(batches[0][: min(4, bs)].to(next(model.visual.parameters()).dtype))
        backbone.encode_images(batches[0][: min(4, bs)])

    input_dtype = next(model.visual.parameters()).dtype  # fp16/bf16 weights under those precisions

    def bare():
        with torch.inference_mode():
            for b in batches:
                model.encode_image(b.to(input_dtype))

    def ours_forward():
        with torch.inference_mode():
            for b in batches:
                backbone.encode_images(b)

    def pipeline():
        extract_features(backbone, samples, with_patches=True, batch_size=bs,
                         num_workers=args.num_workers, progress=False)

    # Interleaved rounds, best of each: fair when the machine's load drifts during the run.
    t_bare = t_fwd = t_pipe = float("inf")
    for _ in range(args.repeats):
        t_bare = min(t_bare, timed(bare))
        t_fwd = min(t_fwd, timed(ours_forward))
        t_pipe = min(t_pipe, timed(pipeline))

    store = FeatureStore(cache_dir)
    kw = dict(dataset="bench", split=name.replace("/", "-"), with_patches=True, batch_size=bs,
              num_workers=args.num_workers, progress=False)
    t_miss = timed(lambda: cached_features(store, backbone, samples, recompute=True, **kw))
    t_hit = timed(lambda: cached_features(store, backbone, samples, **kw), 3)
    files = sorted(p for p in Path(cache_dir).rglob("*.safetensors"))
    size = sum(p.stat().st_size for p in files)
    return dict(model=name, device=str(device), D=backbone.n_features, L=backbone.n_patches,
                n=n, bs=bs, bare=n / t_bare, forward=n / t_fwd, pipeline=n / t_pipe, miss=t_miss,
                hit=t_hit, size=size)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", nargs="+", default=["RN50", "ViT-B-32"],
                   help="open_clip model names (or config JSON paths), random init")
    p.add_argument("--images", type=int, default=128, help="number of images")
    p.add_argument("--batch-size", type=int, default=None, help="default: 256 on CUDA, 64 on CPU")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: ssp's)")
    p.add_argument("--repeats", type=int, default=1, help="best of this many timed runs")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        samples, source = find_images(args.images, Path(tmp))
        print(f"{len(samples)} images ({source}); torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}")
        header = (f"{'model':<10} {'device':<6} {'D':>5} {'L':>4} {'batch':>5} | {'bare img/s':>10} "
                  f"{'encode img/s':>12} {'pipeline img/s':>14} | {'miss s':>7} {'hit ms':>7} "
                  f"{'file MB':>8}")
        print(header)
        print("-" * len(header))
        for name in args.model:
            r = bench_model(name, samples, args, Path(tmp) / "cache" / name.replace("/", "-"))
            print(f"{r['model']:<10} {r['device']:<6} {r['D']:>5} {r['L']:>4} {r['bs']:>5} | "
                  f"{r['bare']:>10.1f} {r['forward']:>12.1f} {r['pipeline']:>14.1f} | "
                  f"{r['miss']:>7.2f} {1000 * r['hit']:>7.1f} {r['size'] / 2**20:>8.2f}",
                  flush=True)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    print("bare: model.encode_image on pre-decoded batches (global only); encode: "
          "Backbone.encode_images (global + local) on the same batches; pipeline: "
          "extract_features from JPEG files (global + local, 1 view); miss/hit: cached_features.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
