"""``eartalk demo``: the whole pipeline on CPU in minutes.

1. synthesise talking-head clips with exact ground truth (``eartalk synth``);
2. train the frame VAE (``vae`` recipe);
3. train the autoregressive model with the full condition stack (``train`` recipe);
4. stream a held-out identity driven by its own speech and controls, switching the emotion
   half-way, and write ``demo.mp4``, ``demo_frames.png`` (ground truth above, generated below)
   and the loss plots.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from eartalk.core.config import structure
from eartalk.core.types import VIDEO_FPS, to_uint8

DEMO_CONDITIONS = ("audio", "voice_activity", "head_pose", "blink", "gaze", "emotion")


def contact_sheet(rows: list[torch.Tensor], path: Path, columns: int = 8) -> Path:
    """Save a grid: one row per uint8 clip ``(T, 3, R, R)``, ``columns`` evenly spaced frames each."""
    from PIL import Image

    picked = []
    for clip in rows:
        idx = torch.linspace(0, clip.shape[0] - 1, columns).round().long()
        picked.append(torch.cat(list(clip[idx]), dim=2))  # (3, R, columns * R)
    grid = torch.cat(picked, dim=1)  # (3, rows * R, columns * R)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)
    return path


def run_demo(
    out: Path,
    preset: str = "tiny",
    clips: int = 96,
    seconds: float = 1.0,
    vae_steps: int = 1000,
    steps: int = 900,
    frames: int = 75,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the demo into ``out`` and return a summary (paths, losses, timings)."""
    from eartalk.core.data.dataset import TalkingHeadDataset
    from eartalk.core.data.synth import synthesize_dataset
    from eartalk.core.engine.presets import PRESETS
    from eartalk.core.media.io import write_video
    from eartalk.recipes.common import read_metrics
    from eartalk.recipes.generate import ControlEdit, run_session
    from eartalk.recipes.train import TrainConfig, TrainRecipe, load_trained
    from eartalk.recipes.vae import VAEConfig, VAERecipe

    out = Path(out)
    resolution = PRESETS[preset].resolution
    window = PRESETS[preset].window
    clip_frames = max(10, window + 4)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    data = synthesize_dataset(out / "data", clips=clips, seconds=seconds, resolution=resolution, seed=seed)
    holdout = synthesize_dataset(out / "holdout", clips=1, seconds=max(seconds, frames / VIDEO_FPS), resolution=resolution, seed=seed + 1000)
    timings["synth_s"] = time.perf_counter() - start

    common = {
        "seed": seed,
        "model": {"preset": preset},
        "data": {"root": str(data), "batch_size": 4, "val_fraction": 0.1},
    }
    start = time.perf_counter()
    # Many short clips (many identities) and short, cheap VAE batches (4 clips x 2 frames) at a
    # higher learning rate: the VAE's error on an unseen identity is set by how many identities
    # and steps it saw, not by clip length.
    vae_cfg = structure(
        {**common, "out_dir": str(out / "vae"), "data": {**common["data"], "clip_frames": 2},
         "optim": {"lr": 3e-3, "weight_decay": 0.0, "warmup_steps": 20},
         "trainer": {"max_steps": vae_steps, "val_every_n_steps": max(1, vae_steps // 2), "checkpoint_every_n_steps": max(1, vae_steps // 2)}},
        VAEConfig,
    )
    vae_ckpt = VAERecipe().run(vae_cfg)
    timings["vae_train_s"] = time.perf_counter() - start

    start = time.perf_counter()
    train_cfg = structure(
        {**common, "out_dir": str(out / "model"),
         "model": {"preset": preset, "vae_checkpoint": str(vae_ckpt)},
         "conditions": [{"name": n} for n in DEMO_CONDITIONS],
         "data": {**common["data"], "clip_frames": clip_frames},
         "optim": {"lr": 2e-3, "warmup_steps": 30},
         "trainer": {"max_steps": steps, "val_every_n_steps": max(1, steps // 4), "checkpoint_every_n_steps": max(1, steps // 4)}},
        TrainConfig,
    )
    ckpt = TrainRecipe().run(train_cfg)
    timings["model_train_s"] = time.perf_counter() - start

    # Stream the held-out identity with its own speech and controls; switch emotion half-way.
    # The dataset reader gives its exact stored ground truth and computes the audio features
    # from its speech, as training does.
    model = load_trained(ckpt)
    clip = TalkingHeadDataset(holdout, clip_frames=frames, stack=model.stack)[0]
    truth = to_uint8(clip["frames"])  # (T, 3, R, R)
    reference = clip["frames"][0]  # (3, R, R): the first frame, as a user would give a portrait
    signals = {name: signal for name, signal in clip["signals"].items() if name != "emotion"}
    half = frames // 2
    edits = [ControlEdit("emotion", "happy", 0, half), ControlEdit("emotion", {"emotion": "sad", "intensity": 3}, half, None)]
    start = time.perf_counter()
    video = run_session(model, reference, frames, edits, signals, progress=True)
    timings["generate_s"] = time.perf_counter() - start

    mp4 = write_video(out / "demo.mp4", video, fps=VIDEO_FPS, audio=clip["audio"])
    sheet = contact_sheet([truth, video], out / "demo_frames.png")
    with torch.no_grad():
        recon = model.vae.decode(model.vae.encode(clip["frames"][None]))[0]
    l1_vae = (to_uint8(recon).float() - truth.float()).abs().mean().item() / 255
    l1_gen = (video.float() - truth.float()).abs().mean().item() / 255

    def first_last(run: Path, key: str) -> list[float]:
        points = read_metrics(run).get(key, [])
        return [round(points[0][1], 4), round(points[-1][1], 4)] if points else []

    return {
        "video": str(mp4),
        "frames_png": str(sheet),
        "vae_loss_first_last": first_last(out / "vae", "train/loss"),
        "model_loss_first_last": first_last(out / "model", "train/loss"),
        "vae_reconstruction_l1": round(l1_vae, 4),
        "generated_vs_truth_l1": round(l1_gen, 4),
        "generation_fps": round(frames / timings["generate_s"], 2),
        "loss_plots": [str(out / "vae" / "loss.png"), str(out / "model" / "loss.png")],
        **{k: round(v, 1) for k, v in timings.items()},
    }
