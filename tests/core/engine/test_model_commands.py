"""``eartalk model info`` and ``eartalk bench stream`` through the real CLI entry point."""

from __future__ import annotations

import json
import types

import pytest

from eartalk.conditions.testing import ToyAudio, ToyCondition
from eartalk.core import registry as registry_module
from eartalk.core.cli import main
from eartalk.core.engine.bench import default_conditions, model_info
from eartalk.core.errors import ConfigError
from eartalk.core.hookspecs import hookimpl


@pytest.fixture(scope="module")
def _registry_with_toys():
    module = types.ModuleType("toy_conditions_for_tests")

    @hookimpl
    def register_conditions():
        return [ToyCondition, ToyAudio]

    module.register_conditions = register_conditions
    return registry_module.build_registry(entry_points=False, extra=[module])


@pytest.fixture()
def toy_registry(_registry_with_toys, monkeypatch):
    """The built-in registry plus the toy plugins (registered in-process, like a third party would)."""
    monkeypatch.setattr(registry_module, "get_registry", lambda: _registry_with_toys)
    return _registry_with_toys


def run_json(capsys, *argv: str) -> dict:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_model_info_json(toy_registry, capsys):
    info = run_json(capsys, "model", "info", "--preset", "tiny", "--json", "--conditions", "toy,toy_audio")
    assert info["conditions"] == ["toy", "toy_audio"]
    assert info["slots"] == 3 and info["tokens_per_frame"] == 16 and info["window"] == 4
    parts = info["params"]
    assert info["params_total"] == parts["vae"] + parts["backbone"] + parts["decoder"] + parts["conditions"]
    assert info["params_backbone_decoder"] == parts["backbone"] + parts["decoder"] < 1_000_000
    assert info["flops_per_frame"] == sum(info["flops_per_frame_parts"].values())
    # CFG doubles the transformer work: guidance off lowers the count by exactly that share
    no_cfg = model_info("tiny", ["toy", "toy_audio"], registry=toy_registry, sampling={"cfg": 1.0})
    parts, parts_no_cfg = info["flops_per_frame_parts"], no_cfg["flops_per_frame_parts"]
    assert parts_no_cfg["backbone"] * 2 == parts["backbone"] and parts_no_cfg["decoder"] * 2 == parts["decoder"]
    assert parts["diffusion_head"] / 2 < parts_no_cfg["diffusion_head"] < parts["diffusion_head"]
    assert parts_no_cfg["vae_decode"] == parts["vae_decode"]
    # more MAR steps cost more
    more = model_info("tiny", ["toy"], registry=toy_registry, sampling={"steps": 4})
    assert more["flops_per_frame"] > model_info("tiny", ["toy"], registry=toy_registry)["flops_per_frame"]


def test_model_info_table_and_errors(toy_registry, capsys):
    assert main(["model", "info", "--preset", "small", "--conditions", "toy"]) == 0
    out = capsys.readouterr().out
    assert "params backbone + decoder" in out and "GFLOPs per frame" in out
    assert main(["model", "info", "--preset", "tiny", "--conditions", "toyy"]) == 2
    assert "did you mean 'toy'" in capsys.readouterr().err
    info = run_json(
        capsys, "model", "info", "--preset", "tiny", "--conditions", "toy", "--json",
        "--arch", "window=6", "--arch", "period=12", "--arch", "sampling.cfg=1.0",
    )
    assert info["window"] == 6 and info["period"] == 12 and info["sampling"]["cfg"] == 1.0
    # dots nest: a control guided on its own adds a third branch to the guided work
    plain = run_json(capsys, "model", "info", "--preset", "tiny", "--conditions", "toy", "--json")
    separate = run_json(capsys, "model", "info", "--preset", "tiny", "--conditions", "toy", "--json",
                        "--arch", "sampling.cfg_separate.toy=2")
    assert separate["sampling"]["cfg_separate"] == {"toy": 2.0}
    guided = {k: v for k, v in plain["flops_per_frame_parts"].items() if k in ("backbone", "decoder")}
    assert {k: separate["flops_per_frame_parts"][k] for k in guided} == {k: v * 3 // 2 for k, v in guided.items()}
    assert main(["model", "info", "--preset", "tiny", "--conditions", "toy", "--arch", "windw=6"]) == 2
    assert "did you mean 'window'" in capsys.readouterr().err


def test_default_conditions_follow_the_registry():
    fake = types.SimpleNamespace(names=lambda kind: ["gaze", "toy", "audio"])
    assert default_conditions(fake) == ["audio", "gaze"]  # built-in stack order, only registered ones
    only_toy = types.SimpleNamespace(names=lambda kind: ["toy"])
    assert default_conditions(only_toy) == ["toy"]  # none of the defaults: everything registered
    with pytest.raises(ConfigError, match="--conditions"):
        default_conditions(types.SimpleNamespace(names=lambda kind: []))


def test_bench_stream_json(toy_registry, capsys):
    result = run_json(
        capsys, "bench", "stream", "--preset", "tiny", "--frames", "12", "--json", "--conditions", "toy",
        "--nocache-frames", "2", "--threads", "1",
    )
    for key in (
        "latency_ms_early", "latency_ms_late", "latency_ms_p95", "peak_rss_mb_early", "peak_rss_mb_late",
        "cache_speedup", "fps", "matmul_peak_ratio",
    ):
        assert isinstance(result[key], float) and result[key] > 0, key
    assert result["latency_ms_p95"] >= min(result["latency_ms_early"], result["latency_ms_late"])
    assert result["cache_speedup_backbone"] > 1.0  # one block vs sink + W blocks
    assert 0 < result["matmul_peak_ratio"] < 1
    assert result["threads"] == 1 and result["conditions"] == ["toy"]
    assert main(["bench", "stream", "--preset", "tiny", "--frames", "3", "--json", "--conditions", "toy"]) == 2
    assert "--frames" in capsys.readouterr().err


def test_bench_stream_refuses_an_empty_no_cache_baseline():
    """--nocache-frames 0 used to die in statistics.median (no data); it is a clear ConfigError now."""
    import pytest

    from eartalk.core.engine.bench import bench_stream
    from eartalk.core.errors import ConfigError

    with pytest.raises(ConfigError, match="--nocache-frames must be at least 1"):
        bench_stream(preset="tiny", frames=8, warmup=1, nocache_frames=0)
