"""Kill-safe training: data position, checkpoint files and logs across a restart.

The fast tests check each mechanism on its own; the slow ones run whole trainings as subprocesses,
SIGKILL them at chosen moments (also inside a checkpoint write) and compare the rerun with an
uninterrupted run exactly: every logged loss and every final weight.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from eartalk.core.data.dataset import ResumableLoader, ResumableSampler
from eartalk.recipes.resume import RunCSVLogger, link_atomically, newest_checkpoint, prepare_resume


def test_sampler_resumed_mid_epoch_yields_the_rest_of_that_epoch() -> None:
    full = ResumableSampler(10, seed=3)
    epoch0 = list(full)
    full.set_epoch(1)
    epoch1 = list(full)
    assert sorted(i for i, _ in epoch0) == list(range(10)) and [i for i, _ in epoch0] != [i for i, _ in epoch1]
    resumed = ResumableSampler(10, seed=3)
    resumed.epoch, resumed.skip = 0, 4
    assert list(resumed) == epoch0[4:], "same indices and item seeds as the uninterrupted epoch"
    assert list(resumed) == epoch0, "the next iteration starts the epoch from its beginning"


def test_loader_state_round_trip_continues_exactly() -> None:
    class Echo(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 10

        def __getitem__(self, index: tuple[int, int]) -> tuple[int, int]:
            return index  # (dataset index, item seed)

    data = Echo()

    def loader() -> ResumableLoader:
        return ResumableLoader(data, ResumableSampler(10, seed=1), batch_size=3, collate_fn=lambda items: items)

    first = loader()
    it = iter(first)
    taken = [next(it), next(it)]
    state = first.state_dict()
    assert state["items"] == 6
    rest = list(it)
    second = loader()
    second.load_state_dict(state)
    assert list(second) == rest
    first_epoch_end = loader()
    first_epoch_end.load_state_dict({**state, "items": 10})
    first_epoch_end.sampler.set_epoch(1)  # Lightning's call at the next epoch start
    reference = loader()
    reference.sampler.set_epoch(1)
    assert list(first_epoch_end) == list(reference), "a state at the end of an epoch resumes at the next one"
    with pytest.warns(UserWarning, match="another dataset or seed"):
        loader().load_state_dict({**state, "size": 11})
    assert taken


def _fake_checkpoint(path: Path, step: int) -> Path:
    torch.save({"global_step": step, "state_dict": {}}, path)
    return path


def test_resume_picks_the_newest_complete_checkpoint_and_repairs_last(tmp_path: Path) -> None:
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    _fake_checkpoint(ckpts / "step000010.ckpt", 10)
    link_atomically(ckpts / "step000010.ckpt", ckpts / "last.ckpt")
    _fake_checkpoint(ckpts / "step000020.ckpt", 20)  # a kill before last.ckpt was re-linked
    (ckpts / ".step000030.ckpt.999.tmp").write_bytes(b"half a checkpoint")  # a kill inside a write
    (ckpts / "broken.ckpt").write_bytes(b"truncated by an older eartalk")
    found = prepare_resume(tmp_path, resume=True)
    assert found == (ckpts / "step000020.ckpt", 20)
    assert os.path.samefile(ckpts / "last.ckpt", ckpts / "step000020.ckpt"), "last.ckpt now points at the newest"
    assert not list(ckpts.glob(".*.tmp")), "temporary files of the killed save are gone"
    assert newest_checkpoint(ckpts) == (ckpts / "last.ckpt", 20), "last.ckpt wins a tie"
    assert prepare_resume(tmp_path, resume=False) is None


def test_csv_logs_are_kept_and_continued(tmp_path: Path) -> None:
    logger = RunCSVLogger(tmp_path)
    for step in range(6):
        logger.log_metrics({"train/loss": 1.0 / (step + 1)}, step)
    logger.log_metrics({"val/loss": 0.5}, 5)
    path = tmp_path / "logs" / "metrics.csv"
    rows = list(csv.DictReader(path.open()))
    assert [r["step"] for r in rows] == ["0", "1", "2", "3", "4", "5", "5"], "every row is on disk at once"
    resumed = RunCSVLogger(tmp_path, resume_step=4)  # the checkpoint holds steps 0-3; 4 and 5 are trained again
    resumed.log_metrics({"train/loss": 0.2}, 4)
    rows = list(csv.DictReader(path.open()))
    assert [r["step"] for r in rows] == ["0", "1", "2", "3", "4"] and rows[-1]["train/loss"] == "0.2"
    RunCSVLogger(tmp_path)  # a fresh run in the same folder keeps the old history beside
    assert (tmp_path / "logs" / "metrics.previous-1.csv").is_file() and not path.exists()


# -- whole runs, killed ------------------------------------------------------------------------
CONFIG = """recipe: train
model: {preset: tiny, vae_checkpoint: random, arch: {window: 3, period: 6}}
conditions: [{name: audio}, {name: head_pose}, {name: blink}, {name: emotion}]
data: {root: DATA, clip_frames: 6, batch_size: 2}
optim: {lr: 2.0e-3, warmup_steps: 5}
trainer: {max_steps: 20, val_every_n_steps: 7, checkpoint_every_n_steps: 5, log_every_n_steps: 1, progress_bar: false, accelerator: cpu}
"""

# A driver that kills its own process at a chosen point of a chosen checkpoint save.
DRIVER = """
import os, signal, sys
from eartalk.core.engine import checkpoint as ck
from eartalk.recipes import resume
point, target = sys.argv[1], sys.argv[2]
real_save, real_link = ck.atomic_save, resume.link_atomically
def die():
    os.kill(os.getpid(), signal.SIGKILL)
def save(payload, path):
    if os.path.basename(str(path)) == target and point == "inside_write":
        import io, torch
        buf = io.BytesIO(); torch.save(payload, buf)
        tmp = os.path.join(os.path.dirname(str(path)), "." + os.path.basename(str(path)) + f".{os.getpid()}.tmp")
        open(tmp, "wb").write(buf.getvalue()[: len(buf.getvalue()) // 2]); die()
    real_save(payload, path)
    if os.path.basename(str(path)) == target and point == "after_write":
        die()
def link(src, dst):
    real_link(src, dst)
    if os.path.basename(str(src)) == target and point == "after_link":
        die()
ck.atomic_save = save
resume.atomic_save = save
resume.link_atomically = link
from eartalk.core.cli import main
sys.exit(main(["train", *sys.argv[3:]]))
"""


@pytest.fixture(scope="module")
def kill_setup(tmp_path_factory):
    from eartalk.core.data.synth import synthesize_dataset

    root = tmp_path_factory.mktemp("kill")
    data = synthesize_dataset(root / "data", clips=3, seconds=2.0, resolution=64, seed=3)
    config = root / "cfg.yaml"
    config.write_text(CONFIG.replace("DATA", str(data)))
    (root / "driver.py").write_text(DRIVER)
    uninterrupted = root / "U"
    train(config, uninterrupted)
    return root, config, uninterrupted


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def train(config: Path, out: Path, *extra: str) -> None:
    result = subprocess.run([sys.executable, "-m", "eartalk", "train", str(config), f"out_dir={out}", *extra],
                            env=ENV, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]


def rows(out: Path) -> list[dict[str, str]]:
    with (out / "logs" / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def assert_same_run(run: Path, uninterrupted: Path) -> None:
    assert rows(run) == rows(uninterrupted), "every logged loss (train and val) equals the uninterrupted run's"
    a = torch.load(uninterrupted / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    b = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert a["global_step"] == b["global_step"] == 20
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), f"final weight {key} differs"
    files = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert files == sorted(p.name for p in (uninterrupted / "checkpoints").iterdir()), f"no -v1 copies, no temporary files: {files}"
    assert (run / "loss.png").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("trigger, delay", [("step000010.ckpt", 0.3), ("step000015.ckpt", 1.5)])
def test_sigkill_at_a_random_moment_then_rerun_is_exact(kill_setup, tmp_path: Path, trigger: str, delay: float) -> None:
    _, config, uninterrupted = kill_setup
    out = tmp_path / "R"
    proc = subprocess.Popen([sys.executable, "-m", "eartalk", "train", str(config), f"out_dir={out}"],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (out / "checkpoints" / trigger).exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before the kill point"
        time.sleep(0.01)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    train(config, out)
    assert_same_run(out, uninterrupted)


@pytest.mark.slow
@pytest.mark.parametrize("point, target", [
    ("inside_write", "step000010.ckpt"),  # half a temporary file on disk
    ("after_write", "step000010.ckpt"),  # step file complete, last.ckpt still at step 5
    ("inside_write", "last.ckpt"),  # the final save of last.ckpt, cut in half
])
def test_sigkill_inside_a_checkpoint_save_then_rerun_is_exact(kill_setup, tmp_path: Path, point: str, target: str) -> None:
    root, config, uninterrupted = kill_setup
    out = tmp_path / "R"
    killed = subprocess.run([sys.executable, str(root / "driver.py"), point, target, str(config), f"out_dir={out}"],
                            env=ENV, capture_output=True, text=True, timeout=900)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    ckpts = out / "checkpoints"
    left = sorted(p.name for p in ckpts.iterdir())
    if point == "inside_write":
        assert any(n.endswith(".tmp") for n in left), left  # the kill really hit the write
        assert all(torch.load(p, weights_only=False, map_location="cpu")["global_step"] >= 0 for p in ckpts.glob("*.ckpt"))
    if point == "after_write":
        last = torch.load(ckpts / "last.ckpt", weights_only=False, map_location="cpu")["global_step"]
        assert last == 5 and (ckpts / target).is_file(), "the kill left last.ckpt one save behind"
        assert newest_checkpoint(ckpts) == (ckpts / target, 10), "the rerun resumes from the newest complete checkpoint"
    train(config, out)
    assert_same_run(out, uninterrupted)
