"""Tests of ssp.backbone with tiny random open_clip models (configs in tests/assets)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import types
import urllib.request
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ssp.backbone import model as bbm
from ssp.backbone import weights as bb
from ssp.backbone.model import load_backbone, n_patches
from ssp.backbone.weights import resolve_quick_gelu

ASSETS = Path(__file__).parents[1] / "assets"
TINY_RN = str(ASSETS / "tiny-rn.json")  # 96 px, 3x3 grid, D = 32
TINY_VIT = str(ASSETS / "tiny-vit.json")  # 64 px, patch 16, 4x4 grid, D = 32

pytestmark = pytest.mark.filterwarnings("ignore:.*RANDOMLY INITIALISED:UserWarning")


@pytest.fixture(scope="module")
def tiny_rn():
    return load_backbone(TINY_RN, device="cpu")


@pytest.fixture(scope="module")
def tiny_vit():
    return load_backbone(TINY_VIT, device="cpu")


def _images(n: int, size: int, seed: int = 0, width: int | None = None) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, width or size, generator=gen)


def _random_tiny_model(config: str, seed: int, **kwargs):
    """A tiny open_clip model with weights different from the backbone's seed-0 init."""
    name = bb._resolve_architecture(config)[0]
    torch.manual_seed(seed)
    model = open_clip.create_model(name, **kwargs).eval()
    with torch.no_grad():  # BN running stats are trivial at init; make them non-trivial
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.normal_(1, 0.1)
    return model


# ---- global and local features ---------------------------------------------------------

@pytest.mark.parametrize("which", ["tiny_rn", "tiny_vit"])
def test_global_equals_encode_image_and_shapes(which, request):
    backbone = request.getfixturevalue(which)
    x = _images(3, backbone.image_size)
    global_, local = backbone.encode_images(x)
    with torch.no_grad():
        expected = backbone.model.encode_image(x)
    torch.testing.assert_close(global_, expected, rtol=1e-5, atol=1e-6)
    assert global_.dtype == local.dtype == torch.float32
    assert global_.shape == (3, backbone.n_features)
    assert local.shape == (3, backbone.n_patches, backbone.n_features)
    assert not global_.requires_grad and not local.requires_grad


def test_num_local_features_from_configs(tiny_rn, tiny_vit):
    assert n_patches(open_clip.get_model_config("RN50")) == 49
    assert n_patches(open_clip.get_model_config("RN101")) == 49
    assert n_patches(open_clip.get_model_config("ViT-B-32")) == 49
    assert n_patches(open_clip.get_model_config("ViT-B-16")) == 196
    assert n_patches(open_clip.get_model_config("ViT-B-16"), image_size=384) == 576
    # the config-only count agrees with the built tiny models
    assert tiny_rn.n_patches == n_patches(json.loads(Path(TINY_RN).read_text())) == 9
    assert tiny_vit.n_patches == n_patches(json.loads(Path(TINY_VIT).read_text())) == 16
    assert tiny_rn.n_features == tiny_vit.n_features == 32


def test_resnet_local_is_the_value_path(tiny_rn):
    x = _images(2, 96, seed=1)
    _, local = tiny_rn.encode_images(x)
    visual = tiny_rn.model.visual
    pool = visual.attnpool
    with torch.no_grad():
        fmap = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(x)))))  # [B, C, 3, 3]
        cells = fmap.flatten(2).transpose(1, 2)  # [B, 9, C], row-major over the grid
        cells = cells + pool.positional_embedding[1:]
        values = torch.einsum("bnc,dc->bnd", cells, pool.v_proj.weight) + pool.v_proj.bias
        expected = torch.einsum("bnd,ed->bne", values, pool.c_proj.weight) + pool.c_proj.bias
    torch.testing.assert_close(local, expected, rtol=1e-4, atol=1e-5)


def test_vit_local_is_ln_post_tokens_times_proj(tiny_vit):
    x = _images(2, 64, seed=2)
    _, local = tiny_vit.encode_images(x)
    visual = tiny_vit.model.visual
    assert visual.final_ln_after_pool is False and visual.pool_type == "tok"
    visual.output_tokens = True  # open_clip's own forward: tokens after ln_post, unprojected
    try:
        with torch.no_grad():
            pooled, tokens = visual(x)
    finally:
        visual.output_tokens = False
    assert tokens.shape == (2, 16, visual.transformer.width)
    torch.testing.assert_close(local, tokens @ visual.proj, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tiny_vit.encode_images(x)[0], pooled)


def test_vit_average_pool_and_final_ln_after_pool(tmp_path):
    cfg = json.loads(Path(TINY_VIT).read_text())
    cfg["vision_cfg"].update(pool_type="avg", final_ln_after_pool=True)
    path = tmp_path / "ssp-test-vit-avg-lnafter.json"
    path.write_text(json.dumps(cfg))
    backbone = load_backbone(str(path), device="cpu")
    visual = backbone.model.visual
    captured = {}
    handle = visual.transformer.register_forward_hook(lambda m, i, out: captured.__setitem__("x", out))
    x = _images(2, 64, seed=11)
    try:
        with torch.no_grad():
            expected_global = backbone.model.encode_image(x)
            expected_local = visual.ln_post(captured["x"][:, 1:]) @ visual.proj
    finally:
        handle.remove()
    global_, local = backbone.encode_images(x)
    torch.testing.assert_close(global_, expected_global, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(local, expected_local, rtol=1e-5, atol=1e-6)


def _open_clip_resized_pos(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """open_clip's own resize_pos_embed applied to a positional embedding."""
    state = {"visual.positional_embedding": pos.clone()}
    open_clip.model.resize_pos_embed(state, types.SimpleNamespace(visual=types.SimpleNamespace(grid_size=(grid, grid))))
    return state["visual.positional_embedding"]


@pytest.mark.parametrize("which,native_grid,other,grid", [("tiny_rn", 3, 128, 4), ("tiny_vit", 4, 96, 6)])
def test_non_native_size_interpolates_positional_embedding(which, native_grid, other, grid, request):
    backbone = request.getfixturevalue(which)
    visual = backbone.model.visual
    key = "visual.attnpool.positional_embedding" if which == "tiny_rn" else "visual.positional_embedding"
    pos = backbone.model.state_dict()[key]
    # native grid: the positional embedding is used as is (the un-interpolated path)
    assert bbm._interpolate_grid(pos, (native_grid, native_grid), (native_grid, native_grid)) is pos
    x = _images(2, other, seed=3)
    global_, local = backbone.encode_images(x)
    assert local.shape == (2, grid * grid, backbone.n_features)
    # reference: the same weights in an open_clip model built for the other size, its positional
    # embedding resized by open_clip's own resize_pos_embed
    resized = open_clip.create_model(backbone.model_name, force_image_size=other).eval()
    state = backbone.model.state_dict()
    state[key] = _open_clip_resized_pos(state[key], grid)
    resized.load_state_dict(state)
    with torch.no_grad():
        expected = resized.encode_image(x)
    torch.testing.assert_close(global_, expected, rtol=1e-4, atol=1e-5)
    # a non-square input gives an h x w grid
    _, local_rect = backbone.encode_images(_images(1, backbone.image_size, width=2 * backbone.image_size))
    assert local_rect.shape[1] == 2 * backbone.n_patches
    assert visual.image_size in (backbone.image_size, (backbone.image_size,) * 2)


def test_encode_images_rejects_bad_input(tiny_vit):
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        tiny_vit.encode_images(torch.zeros(2, 1, 64, 64))
    with pytest.raises(ValueError, match="4 dimensions"):
        tiny_vit.encode_images(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match="floating"):
        tiny_vit.encode_images(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("which", ["tiny_rn", "tiny_vit"])
def test_low_precision_returns_float32_close_to_fp32(precision, which, request):
    reference = request.getfixturevalue(which)
    low = load_backbone(TINY_RN if which == "tiny_rn" else TINY_VIT, device="cpu", precision=precision)
    x = _images(2, reference.image_size, seed=4)
    g_low, l_low = low.encode_images(x)
    g_ref, l_ref = reference.encode_images(x)
    assert g_low.dtype == l_low.dtype == torch.float32
    assert F.cosine_similarity(g_low, g_ref, dim=-1).min() > 0.99
    assert F.cosine_similarity(l_low, l_ref, dim=-1).min() > 0.99
    assert low.identity["precision"] == precision and low.identity != reference.identity
    text = low.encode_text(["a photo of a dog."])
    assert text.dtype == torch.float32
    with pytest.raises(ValueError, match="precision"):
        load_backbone(TINY_VIT, device="cpu", precision="fp8")


# ---- transforms ------------------------------------------------------------------------

def test_preprocess_and_augment(tiny_rn):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 200), dtype=np.uint8), mode="L")
    eval_tensor = tiny_rn.preprocess(image)
    train_tensor = tiny_rn.augment(image)
    assert eval_tensor.shape == train_tensor.shape == (3, 96, 96)
    # the normalisation is the model's: undoing it gives back pixels in [0, 1]
    mean = torch.tensor(tiny_rn.model.visual.image_mean).view(3, 1, 1)
    std = torch.tensor(tiny_rn.model.visual.image_std).view(3, 1, 1)
    pixels = train_tensor * std + mean
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    crop = next(t for t in tiny_rn.augment.transforms if type(t).__name__ == "RandomResizedCrop")
    assert crop.scale == (0.5, 1.0) and crop.interpolation.value == "bicubic"
    eval_id, train_id = tiny_rn.transform_identity(False), tiny_rn.transform_identity(True)
    assert eval_id != train_id
    assert json.loads(train_id)["scale"] == [0.5, 1.0] and json.loads(eval_id)["size"] in (96, [96, 96])
    again = load_backbone(TINY_RN, device="cpu")
    assert again.transform_identity(False) == eval_id and again.transform_identity(True) == train_id


# ---- weights, identity, reproducibility -------------------------------------------------

def test_random_init_is_reproducible_and_loud(tiny_rn, caplog):
    torch.manual_seed(999)  # the init must not depend on the global RNG state
    with pytest.warns(UserWarning, match="RANDOMLY INITIALISED") as caught:
        again = load_backbone(TINY_RN, device="cpu", pretrained="none")
    # said once (a warning, not also a log record), attributed to the caller's line
    assert len([w for w in caught if "RANDOMLY" in str(w.message)]) == 1
    assert "RANDOMLY INITIALISED" not in caplog.text and caught[0].filename == __file__
    x = _images(2, 96, seed=5)
    for a, b in zip(tiny_rn.encode_images(x), again.encode_images(x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert again.identity == tiny_rn.identity
    assert tiny_rn.identity["weights"] == {"source": "random", "seed": bb.RANDOM_INIT_SEED}
    json.dumps(tiny_rn.identity)  # JSON-serialisable
    # the global RNG is not disturbed by the seeded init
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_backbone(TINY_RN, device="cpu")
    torch.testing.assert_close(torch.rand(3), expected)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_local_checkpoint_round_trip(suffix, tmp_path, tiny_vit):
    model = _random_tiny_model(TINY_VIT, seed=7)
    path = tmp_path / f"tiny_vit{suffix}"
    if suffix == ".pt":
        torch.save(model.state_dict(), path)
    else:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = load_backbone(TINY_VIT, pretrained=str(path), device="cpu", quick_gelu=False)
    x = _images(2, 64, seed=8)
    with torch.no_grad():
        expected = model.encode_image(x)
        expected_text = model.encode_text(loaded.tokenizer(["a photo of a cat."]))
    torch.testing.assert_close(loaded.encode_images(x)[0], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loaded.encode_text(["a photo of a cat."]), expected_text, rtol=1e-5, atol=1e-6)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.identity["weights"]["source"] == "file" and loaded.identity["weights"]["sha256"] == sha
    assert loaded.identity != tiny_vit.identity
    assert loaded.pretrained == str(path)
    json.dumps(loaded.identity)
    # the features differ from the random init, so the file really was loaded
    assert not torch.allclose(loaded.encode_images(x)[0], tiny_vit.encode_images(x)[0])


def test_checkpoint_of_wrong_architecture_fails_clearly(tmp_path):
    path = tmp_path / "rn.pt"
    torch.save(_random_tiny_model(TINY_RN, seed=1).state_dict(), path)
    with pytest.raises(RuntimeError, match=r"could not load checkpoint .*rn\.pt.* into model 'tiny-vit'"):
        load_backbone(TINY_VIT, pretrained=str(path), device="cpu", quick_gelu=False)


def test_bad_names_and_pretrained_values(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'RN5O'.*RN50"):
        load_backbone("RN5O")
    with pytest.raises(ValueError, match="neither a pretrained tag of 'RN50'.*openai"):
        load_backbone("RN50", pretrained="opneai")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_backbone("RN50", pretrained=str(tmp_path / "missing.pt"))
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_backbone(str(tmp_path / "nope.json"))
    clash = tmp_path / "RN50.json"
    clash.write_text(Path(TINY_RN).read_text())
    with pytest.raises(ValueError, match="rename the file"):
        load_backbone(str(clash))
    incomplete = tmp_path / "ssp-test-incomplete.json"
    incomplete.write_text(json.dumps({"embed_dim": 8}))
    with pytest.raises(ValueError, match="vision_cfg"):
        load_backbone(str(incomplete))


def test_unsupported_vision_towers_raise(tmp_path):
    cfg = json.loads(Path(TINY_VIT).read_text())
    cfg["vision_cfg"] = {"timm_model_name": "vit_tiny_patch16_224", "image_size": 64}
    timm_cfg = tmp_path / "ssp-test-timm-tower.json"
    timm_cfg.write_text(json.dumps(cfg))
    with pytest.raises(NotImplementedError, match="timm"):
        load_backbone(str(timm_cfg), device="cpu")
    with pytest.raises(NotImplementedError, match="timm"):
        n_patches(cfg)
    cfg = json.loads(Path(TINY_VIT).read_text())
    cfg["vision_cfg"]["attentional_pool"] = True
    pooled_cfg = tmp_path / "ssp-test-attn-pool.json"
    pooled_cfg.write_text(json.dumps(cfg))
    with pytest.raises(NotImplementedError, match="attentional pool"):
        load_backbone(str(pooled_cfg), device="cpu")


# ---- downloads ---------------------------------------------------------------------------

def _offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("simulated: no network")

    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)


def test_download_failure_is_fast_and_explains_the_fix(monkeypatch, tmp_path):
    _offline(monkeypatch)
    monkeypatch.setattr(bb, "_hub_unreachable", lambda: None)  # the hub answers, the download fails
    start = time.perf_counter()
    with pytest.raises(RuntimeError) as info:
        load_backbone("RN50", pretrained="openai", cache_dir=str(tmp_path), device="cpu")
    assert time.perf_counter() - start < 10
    message = str(info.value)
    # a Python caller is told Python arguments, not command-line flags
    for part in ("'RN50'", "'openai'", "simulated: no network",
                 "pretrained='/path/to/checkpoint.pt', quick_gelu=True", "cache_dir"):
        assert part in message, part
    assert "--" not in message


def test_unreachable_hub_fails_at_once_with_the_cache_only(monkeypatch, tmp_path):
    """No request (so no retry) once the hub is known unreachable; the cache is still searched."""
    seen = []

    def cache_only(*args, **kwargs):
        from huggingface_hub import constants

        seen.append(constants.HF_HUB_OFFLINE)
        raise OSError("not in the cache")

    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", cache_only)
    monkeypatch.setattr(bb, "_hub_unreachable", lambda: "simulated: DNS failure")
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"hub is unreachable \(simulated: DNS failure\) and the "
                                           r"weights are not in the local cache"):
        load_backbone("RN50", pretrained="openai", cache_dir=str(tmp_path), device="cpu")
    assert time.perf_counter() - start < 5
    assert seen and all(seen)  # every lookup ran in huggingface_hub's offline mode
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE is False or os.environ.get("HF_HUB_OFFLINE")  # restored


def test_hub_probe_honours_offline_env_and_reports_refused_connections(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert bb._hub_unreachable() == "HF_HUB_OFFLINE is set"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: refused
    monkeypatch.setattr(urllib.request, "getproxies", lambda: {})
    assert "127.0.0.1:9" in bb._hub_unreachable()


def _tiny_dtd(root: Path) -> Path:
    folder = root / "dtd"
    (folder / "images").mkdir(parents=True)
    items = [[f"c{c}/c{c}_{i}.jpg", c, f"c{c}"] for c in range(2) for i in range(3)]
    for item in items:
        (folder / "images" / item[0]).parent.mkdir(exist_ok=True)
        (folder / "images" / item[0]).touch()  # never opened: the backbone fails first
    (folder / "split_zhou_DescribableTextures.json").write_text(
        json.dumps({"train": items, "val": items, "test": items}))
    return root


@pytest.mark.slow
def test_cli_offline_pretrained_tag_is_one_clean_error(tmp_path):
    """``ssp-fewshot --pretrained openai`` without network: one ``error:`` line naming the CLI
    flags, no retry chatter, a non-zero exit, nothing written."""
    root = _tiny_dtd(tmp_path / "data")
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"), "NO_PROXY": "*", "no_proxy": "*"}
    env.pop("HF_HUB_OFFLINE", None)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(proxy, None)
    out, cache = tmp_path / "out", tmp_path / "cache"
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "ssp.cli.fewshot", "--dataset", "dtd", "--root", str(root), "--backbone", "RN50",
         "--pretrained", "openai", "--device", "cpu", "--output", str(out), "--feature-store", str(cache),
         "--no-progress"], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2],
        env=env, timeout=300)
    elapsed = time.perf_counter() - start
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, done.stderr
    assert "Traceback" not in done.stderr and "Retry" not in done.stderr, done.stderr
    assert "hub is unreachable" in errors[0] and "127.0.0.1:9" in errors[0]
    assert "--pretrained /path/to/checkpoint.pt --quick-gelu on" in errors[0]
    assert "quick_gelu=" not in errors[0] and "cache_dir=" not in errors[0]
    assert not out.exists() and not cache.exists()
    assert elapsed < 120  # interpreter start-up and imports included; was > 55 s of retries alone


def test_pretrained_tag_pipeline(monkeypatch, tmp_path):
    """A tag goes: download -> weights, the tag's preprocessing and its QuickGELU setting (here a
    fake 'openai'-like tag for the tiny model whose "download" returns a local file)."""
    model = _random_tiny_model(TINY_VIT, seed=6, force_quick_gelu=True)
    path = tmp_path / "downloaded.bin"
    torch.save(model.state_dict(), path)
    tag_cfg = {"hf_hub": "org/tiny/", "url": "", "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25),
               "interpolation": "bicubic", "resize_mode": "shortest", "quick_gelu": True}
    real_get = open_clip.get_pretrained_cfg
    monkeypatch.setattr(open_clip, "get_pretrained_cfg",
                        lambda m, t: dict(tag_cfg) if (m, t) == ("tiny-vit", "faketag") else real_get(m, t))
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", lambda cfg, cache_dir=None: str(path))
    loaded = load_backbone(TINY_VIT, pretrained="faketag", device="cpu")
    assert _activation_types(loaded.model) == {"QuickGELU"}
    assert loaded.identity["weights"] == {"source": "open_clip-tag", "tag": "faketag", "hf_hub": "org/tiny/", "url": ""}
    normalize = loaded.preprocess.transforms[-1]
    assert tuple(normalize.mean) == (0.5, 0.5, 0.5) and tuple(normalize.std) == (0.25, 0.25, 0.25)
    assert tuple(loaded.augment.transforms[-1].std) == (0.25, 0.25, 0.25)
    x = _images(2, 64, seed=12)
    with torch.no_grad():
        expected = model.encode_image(x)
    torch.testing.assert_close(loaded.encode_images(x)[0], expected, rtol=1e-5, atol=1e-6)


def test_hf_hub_failure_explains_the_fix(monkeypatch, tmp_path):
    _offline(monkeypatch)
    monkeypatch.setattr(bb, "_hub_unreachable", lambda: None)
    with pytest.raises(RuntimeError, match=r"hf-hub:org/missing.*simulated: no network.*pretrained='/path"):
        load_backbone("hf-hub:org/missing", cache_dir=str(tmp_path), device="cpu")
    monkeypatch.setattr(bb, "_hub_unreachable", lambda: "simulated: offline")
    with pytest.raises(RuntimeError, match=r"hub is unreachable \(simulated: offline\) and the repo is not"):
        load_backbone("hf-hub:org/missing", cache_dir=str(tmp_path), device="cpu")
    with pytest.raises(ValueError, match="brings its own weights"):
        load_backbone("hf-hub:org/missing", pretrained="openai")


# ---- QuickGELU ---------------------------------------------------------------------------

def test_quick_gelu_messages_name_python_arguments_or_cli_flags():
    from ssp._checks import cli_messages

    _, python = resolve_quick_gelu("RN50", "openai", quick_gelu=False)
    with cli_messages():
        _, cli = resolve_quick_gelu("RN50", "openai", quick_gelu=False)
    assert "quick_gelu=False" in python and "quick_gelu=None" in python and "--" not in python
    assert "--quick-gelu off" in cli and "--quick-gelu auto" in cli and "quick_gelu=" not in cli


def test_quick_gelu_decision_from_tags_and_names():
    assert resolve_quick_gelu("RN50", "openai") == (True, None)  # open_clip 3.3.0 alone would use GELU
    assert resolve_quick_gelu("ViT-B/32", "openai") == (True, None)
    assert resolve_quick_gelu("ViT-B-16", "openai") == (True, None)
    assert resolve_quick_gelu("RN50-quickgelu", "openai") == (True, None)
    assert resolve_quick_gelu("ViT-B-32", "laion2b_s34b_b79k") == (False, None)
    assert resolve_quick_gelu("RN50", None) == (False, None)
    assert resolve_quick_gelu("RN50-quickgelu", None) == (True, None)
    assert resolve_quick_gelu("RN50", "none", quick_gelu=True) == (True, None)
    decision, warning = resolve_quick_gelu("RN50", "openai", quick_gelu=False)
    assert decision is False and "QuickGELU" in warning and "'openai'" in warning
    decision, warning = resolve_quick_gelu("ViT-B-32", "laion2b_s34b_b79k", quick_gelu=True)
    assert decision is True and "trained with GELU" in warning
    assert resolve_quick_gelu("hf-hub:org/repo", None) == (None, None)


def test_quick_gelu_decision_for_local_files(tmp_path, monkeypatch):
    path = tmp_path / "unknown.pt"
    torch.save(_random_tiny_model(TINY_VIT, seed=3).state_dict(), path)
    decision, warning = resolve_quick_gelu(TINY_VIT, str(path))
    assert decision is False and "cannot tell" in warning and "quick_gelu=True" in warning
    assert resolve_quick_gelu(TINY_VIT, str(path), quick_gelu=True) == (True, None)
    # a file recognised by its sha256 follows the published checkpoint's setting
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setattr(bb, "_known_checkpoint_hashes", lambda: ((sha[:8], "tiny-vit", "openai", True),))
    assert resolve_quick_gelu(TINY_VIT, str(path)) == (True, None)
    decision, warning = resolve_quick_gelu(TINY_VIT, str(path), quick_gelu=False)
    assert decision is False and "recognised as tiny-vit/openai" in warning


def test_known_checkpoint_table_has_openai_hashes():
    rows = {(model, tag): (prefix, qg) for prefix, model, tag, qg in bb._known_checkpoint_hashes()}
    prefix, qg = rows[("RN50", "openai")]
    assert prefix == "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762" and qg is True
    assert rows[("ViT-B-32", "openai")][1] is True


def _activation_types(module: torch.nn.Module) -> set[str]:
    return {type(m).__name__ for m in module.modules() if type(m).__name__ in ("GELU", "QuickGELU")}


def test_built_model_uses_quick_gelu_when_decided(tiny_vit, tmp_path, monkeypatch):
    assert _activation_types(tiny_vit.model) == {"GELU"} and tiny_vit.identity["quick_gelu"] is False
    quick = load_backbone(TINY_VIT, device="cpu", quick_gelu=True)
    assert _activation_types(quick.model.visual) == {"QuickGELU"}
    assert _activation_types(quick.model.transformer) == {"QuickGELU"}
    assert quick.identity["quick_gelu"] is True and quick.identity != tiny_vit.identity
    x = _images(2, 64, seed=9)  # same weights (same seed), different activation -> different features
    assert not torch.allclose(quick.encode_images(x)[0], tiny_vit.encode_images(x)[0])
    # the decision flows from the weights into the built model: a file recognised as OpenAI's
    path = tmp_path / "recognised.pt"
    torch.save(_random_tiny_model(TINY_VIT, seed=4, force_quick_gelu=True).state_dict(), path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setattr(bb, "_known_checkpoint_hashes", lambda: ((sha, "tiny-vit", "openai", True),))
    recognised = load_backbone(TINY_VIT, pretrained=str(path), device="cpu")
    assert _activation_types(recognised.model) == {"QuickGELU"} and recognised.identity["quick_gelu"] is True
    # RN: the vision tower has no GELU; QuickGELU reaches the text tower
    rn = load_backbone(TINY_RN, device="cpu", quick_gelu=True)
    assert _activation_types(rn.model) == {"QuickGELU"}


def test_torchscript_archive_loads_with_quick_gelu(tmp_path):
    model = _random_tiny_model(TINY_VIT, seed=5, force_quick_gelu=True)
    path = tmp_path / "ViT-tiny-openai.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    assert bb.is_torchscript_archive(path)
    assert resolve_quick_gelu(TINY_VIT, str(path)) == (True, None)
    loaded = load_backbone(TINY_VIT, pretrained=str(path), device="cpu")
    assert _activation_types(loaded.model) == {"QuickGELU"}
    assert loaded.identity["weights"]["format"] == "torchscript"
    x = _images(2, 64, seed=10)
    with torch.no_grad():
        expected = model.encode_image(x)
    torch.testing.assert_close(loaded.encode_images(x)[0], expected, rtol=1e-5, atol=1e-6)
    plain = tmp_path / "plain.pt"
    torch.save(model.state_dict(), plain)
    assert not bb.is_torchscript_archive(plain)


# ---- text --------------------------------------------------------------------------------

def test_encode_text_batches_and_validates(tiny_rn):
    texts = [f"a photo of number {i}." for i in range(7)]
    full = tiny_rn.encode_text(texts)
    torch.testing.assert_close(tiny_rn.encode_text(texts, batch_size=3), full, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        expected = tiny_rn.model.encode_text(tiny_rn.tokenizer(texts))
    torch.testing.assert_close(full, expected)
    assert full.shape == (7, 32) and full.dtype == torch.float32
    with pytest.raises(TypeError, match="list of strings"):
        tiny_rn.encode_text("a photo of a dog.")


def test_text_classifier_matches_manual_ensemble(tiny_vit):
    classnames = ["golden_retriever", "tabby cat", "sea_lion"]
    templates = ["a photo of a {}.", "a bad photo of the {}.", "art of the {}."]
    weights = tiny_vit.text_classifier(classnames, templates, batch_size=4)
    assert weights.shape == (3, tiny_vit.n_features)
    torch.testing.assert_close(weights.norm(dim=1), torch.ones(3))
    rows = []
    for name in classnames:
        prompts = [t.format(name.replace("_", " ")) for t in templates]
        with torch.no_grad():
            emb = tiny_vit.model.encode_text(tiny_vit.tokenizer(prompts)).float()
        emb = emb / emb.norm(dim=1, keepdim=True)
        mean = emb.mean(dim=0)
        rows.append(mean / mean.norm())
    torch.testing.assert_close(weights, torch.stack(rows), rtol=1e-5, atol=1e-6)
    # "_" really is replaced
    torch.testing.assert_close(tiny_vit.text_classifier(["golden_retriever"], templates),
                               tiny_vit.text_classifier(["golden retriever"], templates))
    # extra per-class prompts (e.g. CuPL sentences) join the class's average
    extra = tiny_vit.text_classifier(classnames, templates, class_prompts=[["a dog."], [], ["an animal.", "a seal."]])
    torch.testing.assert_close(extra[1], weights[1])
    assert not torch.allclose(extra[0], weights[0])
    # one template rule (ssp.data.check_templates): exactly one "{}", a lone string is one template
    for bad in (["a photo."], ["a {} photo of a {}."], []):
        with pytest.raises(ValueError, match=r"exactly one '\{\}'|no prompt templates"):
            tiny_vit.text_classifier(classnames, bad)
    torch.testing.assert_close(tiny_vit.text_classifier(classnames, "a photo of a {}."),
                               tiny_vit.text_classifier(classnames, ["a photo of a {}."]))
    # one class-name clean-up (ssp.data.clean_classname): outer spaces go too
    torch.testing.assert_close(tiny_vit.text_classifier([" sea_lion "], templates),
                               tiny_vit.text_classifier(["sea lion"], templates))
    with pytest.raises(ValueError, match="class_prompts has 1 lists"):
        tiny_vit.text_classifier(classnames, templates, class_prompts=[["x"]])
