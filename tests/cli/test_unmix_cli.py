"""``ssp-unmix`` through a real subprocess: analyze on the real StanfordCars classifier; segment,
train and mlr on voc_tiny / coco_tiny with the random-init tiny ViT."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _cli import run_cli
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
TINY = ["--backbone", str(REPO / "tests" / "assets" / "tiny-vit.json"), "--pretrained", "none",
        "--device", "cpu", "--no-progress"]


def run(args, cache_dir, check=True):
    env = dict(os.environ, SSP_FEATURE_STORE=str(cache_dir), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "ssp.cli.unmix", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def in_process(args, cache_dir, monkeypatch) -> tuple[int, str, str]:
    """The same entry point in this process (cheaper than a subprocess for follow-up calls)."""
    monkeypatch.setenv("SSP_FEATURE_STORE", str(cache_dir))
    return run_cli("ssp.cli.unmix", *args)


def record(proc) -> dict:
    stdout = proc if isinstance(proc, str) else proc.stdout
    line = [ln for ln in stdout.splitlines() if ln.startswith("record: ")][-1]
    return json.loads(Path(line[len("record: "):]).read_text())


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("unmix-cache")


@pytest.mark.slow
def test_analyze_real_stanford_cars_classifier(tip_cache_root, tmp_path, cache_dir):
    path = tip_cache_root / "stanford_cars" / "text_weights.pt"
    if not path.is_file():
        pytest.skip("StanfordCars text classifier not found")
    proc = run(["analyze", "--text-features", path, "--output", tmp_path], cache_dir)
    assert "MFI 0.6538 over 196 classes (D = 512)" in proc.stdout
    rec = record(proc)
    assert rec["text_layout"] == "DC" and rec["n_classes"] == 196 and len(rec["top_confusers"]) == 196
    for key in ("heatmap", "histogram"):
        assert Path(rec["files"][key]).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_segment_voc_tiny_writes_miou_masks_and_pictures(voc_root, tmp_path, cache_dir):
    proc = run(["segment", "--dataset", "voc", "--root", voc_root, *TINY, "--output", tmp_path,
                "--short-side", 64, "--crop", 64, "--stride", 32, "--examples", 2], cache_dir)
    assert "mIoU" in proc.stdout and "Traceback" not in proc.stderr
    rec = record(proc)
    assert rec["n_images"] == 17 and rec["method"] == "clip-dense" and math.isfinite(rec["mIoU"])
    assert len(rec["per_class_iou"]) == 21 and "background" in rec["per_class_iou"]
    masks = sorted(Path(rec["masks"]).glob("*.png"))
    assert len(masks) == 17
    with Image.open(masks[0]) as m:
        gt = Image.open(voc_root / "VOC2012" / "SegmentationClass" / masks[0].name)
        assert m.mode == "P" and m.size == gt.size
    assert len(rec["examples"]) == 2 and all(Path(p).is_file() for p in rec["examples"])
    # the record's mIoU is the mean of its finite per-class IoUs
    values = [v for v in rec["per_class_iou"].values() if v is not None]
    assert rec["mIoU"] == pytest.approx(float(np.mean(values)))


@pytest.mark.slow
def test_train_then_segment_and_mlr_use_the_projector(voc_root, tmp_path, cache_dir, monkeypatch):
    proc = run(["train", "--dataset", "voc", "--root", voc_root, *TINY, "--output", tmp_path,
                "--image-size", 64, "--epochs", 2, "--train-batch-size", 8, "--embed-dim", 16], cache_dir)
    rec = record(proc)
    assert rec["task"] == "multi_label" and rec["n_images"] == 17
    assert set(rec["mfi"]) == {"before", "after", "drop"} and len(rec["history"]) == 2
    proj = rec["projector"]["path"]
    assert Path(proj + ".safetensors").is_file() and json.loads(Path(proj + ".json").read_text())["task"] == "multi_label"

    # follow-up calls in this process: the subprocess path of each subcommand is tested elsewhere
    code, out, _ = in_process(["segment", "--dataset", "voc", "--root", voc_root, *TINY, "--output", tmp_path,
                               "--projector", proj, "--short-side", 64, "--crop", 64, "--stride", 64,
                               "--max-images", 3, "--examples", 1, "--background", "none"],
                              cache_dir, monkeypatch)
    assert code == 0
    seg = record(out)
    assert seg["method"] == "unmix-projector" and seg["n_images"] == 3 and "background ignored" in seg["protocol"]
    assert seg["per_class_iou"]["background"] is None           # VOC20: background never scored

    code, out, _ = in_process(["mlr", "--dataset", "voc", "--root", voc_root, *TINY, "--output", tmp_path,
                               "--projector", proj, "--image-size", 64], cache_dir, monkeypatch)
    assert code == 0
    mlr = record(out)
    assert mlr["method"] == "unmix-projector" and 0 < mlr["mAP"] <= 100
    assert mlr["classes_with_positives"] == 13 and len(mlr["per_class_ap"]) == 20


@pytest.mark.slow
def test_mlr_on_coco_tiny(data_root, tmp_path, cache_dir):
    root = data_root / "coco_tiny"
    if not root.is_dir():
        pytest.skip("coco_tiny not found")
    proc = run(["mlr", "--dataset", "coco", "--root", root, *TINY, "--output", tmp_path, "--image-size", 64],
               cache_dir)
    rec = record(proc)
    assert rec["split"] == "val2017" and rec["n_images"] == 1 and rec["classes_with_positives"] == 4
    # one image: each present class is ranked alone, so its AP is 100
    assert rec["per_class_ap"]["cat"] == 100 and rec["per_class_ap"]["dog"] is None


def test_bad_input_gives_one_line_and_writes_nothing(tmp_path, cache_dir, monkeypatch):
    bad = tmp_path / "weights.pt"
    bad.write_text("not a tensor")
    out = tmp_path / "out"
    proc = run(["segment", "--dataset", "voc", "--root", tmp_path / "missing", "--output", out], cache_dir,
               check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ssp-unmix segment: error: no VOC2012 or VOC2007 folder")
    for args, needle in ((["analyze", "--text-features", bad, "--output", out],
                          "weights.pt is not a tensor file: corrupt or not saved by torch.save"),
                         (["mlr", "--dataset", "dtd", "--root", tmp_path, "--output", out], "multi-label dataset"),
                         (["train", "--output", out], "--features")):
        code, _, err = in_process(args, cache_dir, monkeypatch)
        lines = err.strip().splitlines()
        assert code != 0 and len(lines) == 1 and lines[0].startswith(f"ssp-unmix {args[0]}: error:"), err
        assert needle in lines[0]
    assert not out.exists() or not any(out.iterdir())


# ------------------------------------------------------------------ text classifiers: one rule, one spelling


def _unit_columns(d: int, c: int, seed: int = 0) -> np.ndarray:
    w = np.random.default_rng(seed).normal(size=(d, c)) + 0.3
    return (w / np.linalg.norm(w, axis=0)).astype(np.float32)


def _one_error_line(err: str, command: str = "analyze") -> str:
    """The error: one line, the last one (a random-weights banner may come before it)."""
    lines = err.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith(f"ssp-unmix {command}: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    return errors[0]


def test_analyze_reads_a_dc_file_and_refuses_it_read_as_cd(tmp_path, cache_dir, monkeypatch):
    """A [D, C] head (unit-norm columns, the Tip-Adapter layout) is read as D x C by auto and by
    DC; read as CD it is refused (it used to give the MFI of D 'classes' of width C)."""
    import torch

    from ssp.unmix import mfi_score

    w = _unit_columns(16, 5)
    torch.save(torch.from_numpy(w), tmp_path / "head.pt")
    expected = mfi_score(w.T)
    for layout in ("auto", "DC"):
        code, out, _ = in_process(["analyze", "--text-features", tmp_path / "head.pt", "--text-layout", layout,
                                   "--output", tmp_path / "runs"], cache_dir, monkeypatch)
        assert code == 0
        rec = record(out)
        assert rec["text_layout"] == "DC" and rec["n_classes"] == 5 and rec["dim"] == 16
        assert rec["mfi"] == pytest.approx(expected, abs=1e-6)
    code, _, err = in_process(["analyze", "--text-features", tmp_path / "head.pt", "--text-layout", "CD",
                               "--output", tmp_path / "runs"], cache_dir, monkeypatch)
    line = _one_error_line(err)
    assert code == 1 and "unit-norm columns but not unit-norm rows" in line and "--text-layout DC" in line


def test_text_layout_has_one_spelling(tmp_path, cache_dir, monkeypatch):
    from ssp.cli import fewshot, unmix

    def choices(parser, dest):
        subparsers = [a for a in parser._actions if a.dest == "command"]
        actions = list(parser._actions) + [a for sp in subparsers for p in sp.choices.values() for a in p._actions]
        return {tuple(a.choices) for a in actions if a.dest == dest}

    assert choices(unmix.build_parser(), "text_layout") == choices(fewshot.build_parser(), "text_layout") \
        == {("auto", "CD", "DC")}
    code, _, err = in_process(["analyze", "--text-features", tmp_path / "x.pt", "--text-layout", "DxC"], cache_dir,
                              monkeypatch)
    assert code == 2 and "--text-layout" in err


@pytest.mark.parametrize("content,needle", [
    ("zeros", "rows [0, 1, 2, 3, 4] (5 rows) are all zero"),
    ("nan", "contain NaN or infinite values"),
    ("random-bytes", "is not a tensor file: corrupt or not saved by torch.save"),
])
def test_analyze_refuses_what_ssp_fewshot_refuses(tmp_path, cache_dir, monkeypatch, capsys, content, needle):
    """One validation rule for text features: the file ssp-fewshot rejects, ssp-unmix rejects too
    (an all-zero classifier used to print 'MFI 0.0000' and exit 0)."""
    import torch

    from ssp.features.text import load_text_features

    path = tmp_path / "head.pt"
    if content == "random-bytes":
        path.write_bytes(b"\x80\x04" + np.random.default_rng(0).bytes(300))
    else:
        w = _unit_columns(16, 5) if content == "nan" else np.zeros((16, 5), np.float32)
        if content == "nan":
            w[3, 2] = np.nan
        torch.save(torch.from_numpy(w), path)
    code, out, err = in_process(["analyze", "--text-features", path, "--text-layout", "DC",
                                 "--output", tmp_path / "runs"], cache_dir, monkeypatch)
    assert code == 1 and needle in _one_error_line(err) and "MFI" not in out
    with pytest.raises(ValueError, match=None) as fewshot_error:  # the loader ssp-fewshot uses
        load_text_features(path, 5, 16)
    assert needle in str(fewshot_error.value)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_classnames_from_a_coop_split_file(tmp_path, cache_dir, monkeypatch):
    import json

    import torch

    torch.save(torch.from_numpy(_unit_columns(16, 3)), tmp_path / "head.pt")
    split = {"train": [["a/1.jpg", 1, "sports_car"], ["b/1.jpg", 0, "sedan"]],
             "val": [["c/1.jpg", 2, "pickup truck"]], "test": []}
    (tmp_path / "split_zhou_Toy.json").write_text(json.dumps(split))
    code, out, _ = in_process(["analyze", "--text-features", tmp_path / "head.pt", "--classnames",
                               f"split:{tmp_path / 'split_zhou_Toy.json'}", "--output", tmp_path / "runs"],
                              cache_dir, monkeypatch)
    assert code == 0
    assert [r["class"] for r in record(out)["top_confusers"]] == ["sedan", "sports car", "pickup truck"]
    (tmp_path / "names.txt").write_text("a\nb\n")
    code, _, err = in_process(["analyze", "--text-features", tmp_path / "head.pt", "--classnames",
                               tmp_path / "names.txt", "--output", tmp_path / "runs"], cache_dir, monkeypatch)
    assert code == 2 and "lists 2 class names but the classifier has 3 classes" in _one_error_line(err)


def test_a_text_file_given_as_checkpoint_is_one_line(tmp_path, cache_dir, monkeypatch):
    (tmp_path / "some.txt").write_text("\n".join(f"line {i}" for i in range(9)))
    code, _, err = in_process(["analyze", "--dataset", "dtd", "--root", tmp_path, "--backbone",
                               REPO / "tests" / "assets" / "tiny-vit.json", "--pretrained", tmp_path / "some.txt",
                               "--device", "cpu", "--output", tmp_path / "runs"], cache_dir, monkeypatch)
    line = _one_error_line(err)
    assert code == 1 and "some.txt' is not a checkpoint saved by torch.save" in line
    assert "weights_only" not in line


def test_segment_names_the_mask_with_a_value_outside_the_classes(tmp_path, cache_dir, monkeypatch):
    voc = tmp_path / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    Image.new("RGB", (64, 64), (90, 120, 30)).save(voc / "JPEGImages" / "a.jpg")
    mask = np.zeros((64, 64), np.uint8)
    mask[10:20, 10:20] = 37  # VOC has classes 1..20 and 255
    im = Image.fromarray(mask, mode="P")
    im.putpalette([0] * 768)
    im.save(voc / "SegmentationClass" / "a.png")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("a\n")
    code, _, err = in_process(["segment", "--dataset", "voc", "--root", tmp_path, *TINY, "--output",
                               tmp_path / "runs", "--short-side", 64, "--crop", 64, "--stride", 64],
                              cache_dir, monkeypatch)
    line = _one_error_line(err, "segment")
    assert code == 1 and f"mask {voc / 'SegmentationClass' / 'a.png'} holds value(s) [37] outside the classes" in line
    assert not any((tmp_path / "runs").iterdir())  # no run folder without its record
