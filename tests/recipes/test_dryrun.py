"""`eartalk train CONFIG --dry-run` on every shipped config, and the optimiser's weight-decay groups."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eartalk.core.commands import load_recipe_config
from eartalk.recipes.dryrun import dry_run

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "recipes" / "configs").glob("*.yaml"))
KEYS = {"params_total", "memory_per_device_gb", "strategy", "devices", "num_nodes", "ran_step"}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_builds_its_trainer_and_estimates(config: Path, tmp_path: Path) -> None:
    """Data module, model (meta device) and Trainer built as the real run would: this is where
    `save_top_k=3` without a monitor used to crash every config beyond tiny."""
    recipe_cls, cfg = load_recipe_config(config, [f"out_dir={tmp_path / 'run'}"])
    report = dry_run(recipe_cls, cfg, estimate_only=True)
    assert KEYS <= set(report) and report["ran_step"] is False
    json.dumps(report)  # one JSON object
    parts = report["memory_breakdown_gb"]
    assert report["memory_per_device_gb"] == pytest.approx(sum(v for k, v in parts.items() if k != "total"), abs=0.02)
    assert report["memory_per_device_gb"] > 0
    if recipe_cls.name == "vae":
        assert report["params_total"] == report["params_trainable"] > 0
    else:
        assert report["params_total"] > report["params_trainable"] > 0, "the model's VAE is frozen"
    assert report["strategy"] == str(cfg.trainer.strategy) and report["num_nodes"] == cfg.trainer.num_nodes
    assert not (tmp_path / "run").exists(), "a dry run writes nothing under out_dir"


def test_memory_estimate_scales_with_batch_and_fsdp_shards_the_states() -> None:
    config = CONFIGS[0].parent / "eartalk_small_train.yaml"
    cls, one = load_recipe_config(config, ["data.batch_size=1"])
    _, four = load_recipe_config(config, ["data.batch_size=4"])
    _, fsdp = load_recipe_config(config, ["data.batch_size=1", "trainer.strategy=fsdp", "trainer.devices=4"])
    a, b, c = (dry_run(cls, cfg, estimate_only=True)["memory_breakdown_gb"] for cfg in (one, four, fsdp))
    assert b["activations"] == pytest.approx(4 * a["activations"], rel=1e-2) and b["optimizer"] == a["optimizer"]
    assert c["optimizer"] == pytest.approx(a["optimizer"] / 4, rel=3e-2)  # parts are rounded to 1 MiB
    assert c["gradients"] == pytest.approx(a["gradients"] / 4, rel=3e-2)


@pytest.mark.slow
def test_dry_run_cli_runs_one_step_on_synthetic_data(tmp_path: Path) -> None:
    config = CONFIGS[0].parent / "eartalk_tiny_train.yaml"
    out = subprocess.run(
        [sys.executable, "-m", "eartalk", "train", str(config), f"out_dir={tmp_path / 'run'}",
         f"data.root={tmp_path / 'absent'}", "trainer.accelerator=cpu", "--dry-run", "--json"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert report["ran_step"] is True and report["step_loss"] > 0
    notes = " ".join(report["notes"])
    assert "does not exist: the step ran on a synthetic dataset" in notes and "random VAE" in notes
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_dry_run_cli_exits_0_for_every_shipped_config(config: Path, tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "eartalk", "train", str(config), "--dry-run", "--json"],
                         capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert KEYS <= set(report)
    assert report["ran_step"] == (report["params_total"] < 50e6 and report["strategy"] in ("auto",)), report["notes"]


def test_no_weight_decay_on_norms_biases_embeddings_and_tokens(tmp_path: Path) -> None:
    from eartalk.core.config import unstructure
    from eartalk.recipes.train import EarTalkModule, TrainConfig

    cfg = unstructure(TrainConfig(out_dir=str(tmp_path)))
    cfg["model"]["vae_checkpoint"] = "random"
    cfg["optim"]["weight_decay"] = 0.05
    module = EarTalkModule(cfg)
    opt = module.configure_optimizers()["optimizer"]
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    named = {n: p for n, p in module.named_parameters() if p.requires_grad}
    assert set(decay_of) == {id(p) for p in named.values()}, "every trainable parameter is optimised once"
    never = ("null_token", "mask_token", "type_embedding", "row_embed", "col_embed", "role_embed", "id_pos", "bias")
    checked = 0
    for name, param in named.items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in never or "norm" in name or "embed" in name or param.dim() < 2:
            assert decay_of[id(param)] == 0.0, f"{name} is decayed"
            checked += 1
    assert checked > 20
    emotion_table = "model.stack.plugins.emotion.table.weight"
    assert decay_of[id(named[emotion_table])] == 0.0, "nn.Embedding weights are not decayed"
    linear = [n for n, m in module.named_modules() if isinstance(m, torch.nn.Linear) and m.weight.requires_grad]
    assert linear and all(decay_of[id(named[f"{n}.weight"])] == 0.05 for n in linear), "linear weights keep their decay"
