"""Every Python block of the README runs as written, in README order, in a fresh folder holding
the files a user would have (a Tip-Adapter cache folder, two images) (issue 27, item 9).

A block that continues the previous one says so in its first line; the blocks share one namespace,
as in one Python session. The backbone block names OpenAI's weights, which cannot be downloaded
where ssp is tested: run as written it must fail with ssp's one-line weights error, and then it runs
once more with only the weights tag changed to ``none`` (random weights)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from _tip_cache_folder import write_tip_cache

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M)


def test_the_readme_has_python_blocks():
    blocks = python_blocks()
    assert len(blocks) >= 6
    assert all("…" not in b for b in blocks)


def test_every_python_block_runs_as_written(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    write_tip_cache(tmp_path / "caches" / "stanford_cars", shots=(16,), dim=16)
    for i, name in enumerate(["cat.jpg", "dog.jpg"]):
        Image.new("RGB", (64, 48), (40 * i, 120, 200)).save(name)
    namespace: dict = {}
    ran = []
    for i, code in enumerate(python_blocks()):
        label = f"{README} (Python block {i + 1}: {code.splitlines()[0]})"
        if 'load_backbone("RN50", "openai"' in code:
            with pytest.raises(Exception) as info:   # noqa: PT011 (whatever ssp raises, it must be one clear line)
                exec(compile(code, label, "exec"), dict(namespace))
            message = str(info.value)
            assert "openai" in message and len(message.splitlines()) <= 3, message
            code = code.replace('"openai"', '"none"')
            exec(compile(code, label, "exec"), namespace)
            encoded = (tuple(namespace["image_features"].shape), tuple(namespace["text_features"].shape))
        else:
            exec(compile(code, label, "exec"), namespace)
        ran.append(i)
    assert len(ran) == len(python_blocks())
    # what the blocks promise
    search = namespace["search"]
    assert set(search.best_params_) == {"routing", "beta", "alpha", "gamma"}
    assert 0.0 <= search.best_accuracy_pct_ <= 100.0 and 0.0 <= search.best_score_ <= 1.0
    assert namespace["logits"].shape == (40, 10) and namespace["predictions"].shape == (40,)
    result = namespace["result"]   # the last run_method call: ape+ssp
    assert 0.0 <= result.test_accuracy <= 100.0
    assert {"routing", "rank", "beta", "alpha", "gamma"} <= set(result.hyperparameters)
    assert namespace["tip_f"].best_epoch_ >= 1
    assert encoded[0][0] == 2 and encoded[1][0] == 2 and encoded[0][1] == encoded[1][1]   # [B, D], [C, D]
    assert (tmp_path / "runs" / "unmix" / "cars.safetensors").is_file()
