"""Two CPU processes (gloo) train with DDP from the CLI: checkpoints, per-rank masks, exact-state resume, EMA.

The run is ``eartalk train recipes/configs/eartalk_tiny_train.yaml trainer.accelerator=cpu
trainer.strategy=ddp trainer.devices=2 trainer.max_steps=6`` (plus a synthetic data root), started
through ``ddp_driver.py``, which runs the same CLI in-process and records what each rank drew.
Lightning's launcher re-runs the driver for rank 1, so both ranks record.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("ddp_driver.py")

pytestmark = pytest.mark.slow  # two ranks x two runs of Lightning start-up: ~1-2 minutes on 2 cores


def _train(tmp: Path, data: Path, rec: Path, *extra: str) -> subprocess.CompletedProcess:
    rec.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, str(DRIVER), "train", str(REPO / "recipes/configs/eartalk_tiny_train.yaml"),
        "trainer.accelerator=cpu", "trainer.strategy=ddp", "trainer.devices=2",
        f"out_dir={tmp / 'run'}", f"data.root={data}", "model.vae_checkpoint=random", "data.batch_size=2",
        "trainer.checkpoint_every_n_steps=3", "trainer.progress_bar=false", "trainer.ema_decay=0.9", *extra,
    ]
    env = {**os.environ, "EARTALK_TEST_RECORD": str(rec), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_ddp_two_ranks_checkpoints_masks_and_resume(tmp_path: Path) -> None:
    from eartalk.core.data.synth import synthesize_dataset

    data = synthesize_dataset(tmp_path / "data", clips=4, seconds=1.2, resolution=64, seed=0, progress=False)
    _train(tmp_path, data, tmp_path / "rec1", "trainer.max_steps=6")
    ckpts = tmp_path / "run" / "checkpoints"
    assert {"step000003.ckpt", "step000006.ckpt", "last.ckpt"} <= {p.name for p in ckpts.iterdir()}

    # Both ranks trained (world size 2) and drew different masks at every step.
    rec = tmp_path / "rec1"
    starts = [torch.load(rec / f"start.rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [s["world_size"] for s in starts] == [2, 2]
    # Per-rank random streams: seeded with seed + rank, so the generators differ before any batch is drawn.
    assert [s["initial_seed"] for s in starts] == [0, 1]
    assert not torch.equal(starts[0]["rng_state"], starts[1]["rng_state"])
    masks = [torch.load(rec / f"masks.rank{r}.pt") for r in (0, 1)]
    assert len(masks[0]) == len(masks[1]) == 6
    assert all(not torch.equal(a, b) for a, b in zip(*masks, strict=True))

    last = torch.load(ckpts / "last.ckpt", weights_only=False)
    assert last["global_step"] == 6
    # EMA: stored under its own key, one average per trainable weight, not the raw weights.
    ema = last["ema_state_dict"]
    assert ema and set(ema) <= set(last["state_dict"])
    assert any(not torch.equal(ema[k], last["state_dict"][k].float()) for k in ema)
    assert last["ema_updates"] == 6

    # Resume from last.ckpt: both ranks start at the saved step with the saved optimiser state.
    _train(tmp_path, data, tmp_path / "rec2", "trainer.max_steps=8", "trainer.attention=sparse")
    saved = last["optimizer_states"][0]
    for r in (0, 1):
        start = torch.load(tmp_path / "rec2" / f"start.rank{r}.pt", weights_only=False)
        assert start["global_step"] == 6
        state = start["optimizer"]["state"]
        assert state.keys() == saved["state"].keys()
        for key, values in saved["state"].items():
            for name in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(torch.as_tensor(state[key][name]), torch.as_tensor(values[name])), (key, name)
    final = torch.load(ckpts / "last.ckpt", weights_only=False)
    assert final["global_step"] == 8 and final["ema_updates"] == 8
