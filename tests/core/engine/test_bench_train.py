"""``eartalk bench train --json`` and ``--device`` / ``--precision`` of the bench commands."""

from __future__ import annotations

import json

import pytest

from eartalk.core.cli import main
from eartalk.core.engine.bench_train import scaled_arch
from eartalk.core.engine.devices import resolve_device
from eartalk.core.errors import ConfigError


@pytest.mark.slow  # three timed training steps per variant
def test_bench_train_json_reports_the_ratios(capsys) -> None:
    code = main(["bench", "train", "--preset", "tiny", "--frames", "8", "--scale", "1", "--reps", "1",
                 "--conditions", "voice_activity", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("step_ms_dense", "step_ms_sparse", "step_ms_latents"):
        assert out[key] > 0
    assert out["sparse_speedup"] == pytest.approx(out["step_ms_dense"] / out["step_ms_sparse"], rel=0.01)
    assert out["latents_speedup"] == pytest.approx(out["step_ms_sparse"] / out["step_ms_latents"], rel=0.01)
    assert 0 < out["attention_pairs_ratio"] < 1  # T = 8 > W = 4: the sparse path skips blocks


def test_scaled_arch_keeps_the_layout() -> None:
    base, small = scaled_arch("base", 1), scaled_arch("base", 8)
    assert (small.num_tokens, small.window, small.token_dim) == (base.num_tokens, base.window, base.token_dim)
    assert small.width == base.width // 8 and small.depth == base.depth // 8


def test_devices(capsys) -> None:
    assert resolve_device("auto") in ("cpu", "cuda")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match="--device"):
        resolve_device("nonsense")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")
    assert main(["bench", "stream", "--preset", "tiny", "--precision", "fp8"]) == 2  # ConfigError: usage error
    assert "--precision 'fp8'" in capsys.readouterr().err
