"""``eartalk demo``: the whole pipeline on CPU in minutes, measured.

1. synthesise talking-head clips with exact ground truth (``eartalk synth``) and train the
   synthetic probe that reads controls back from frames (:mod:`eartalk.metrics.probe`; reused
   when ``--probe`` names an existing file);
2. train the frame VAE (``vae`` recipe) and the autoregressive model (``train`` recipe);
3. stream a held-out identity for 20 s from its own held-out speech and its own controls, with
   edits: the head turns to +25 deg yaw at 5 s (for 5 s), an extra blink at 7 s, and the emotion
   switches to happy (intensity 3) at 10 s;
4. render the **truth of the edited controls** with the same renderer (same identity, same speech,
   the commanded head pose, blinks and emotion), write ``demo.mp4`` with truth (left) and
   generated (right) side by side, ``demo_frames.png`` (truth above, generated below), and
   ``summary.json`` with the probe's figures (keys as in ``eartalk study``'s report).

The figures are measured on the generated frames against the commanded controls and the true
mouth; ``fidelity: proxy`` (the probe is a model made here, for synthetic faces only).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eartalk.core.types import VIDEO_FPS, to_uint8

DEMO_CONDITIONS = ("audio", "voice_activity", "head_pose", "blink", "gaze", "emotion")
TURN_START, TURN_STOP, TURN_YAW, TURN_RAMP = 5.0, 10.0, 25.0, 10  # seconds, seconds, degrees, frames
EXTRA_BLINK = 7.0  # seconds
EMOTION_SWITCH, EMOTION_TO, EMOTION_INTENSITY = 10.0, "happy", 3


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


def demo_controls(signals: dict[str, torch.Tensor], frames: int) -> dict[str, torch.Tensor]:
    """The demo's commanded controls: the clip's own, with the head turn, the extra blink and the emotion switch.

    Args:
        signals: the held-out clip's own per-frame signals ``{name: (T, D)}``.
        frames: T.

    Returns:
        New signals (same keys); edits past the clip's end are cut.
    """
    from eartalk.core.data.synth import EMOTIONS

    out = {n: s[:frames].clone() for n, s in signals.items()}
    pose = out["head_pose"]
    a, b = int(TURN_START * VIDEO_FPS), int(TURN_STOP * VIDEO_FPS)
    if a < frames:
        b = min(b, frames)
        start_pose = pose[a].clone()
        for f in range(a, b):
            w = min(1.0, (f - a + 1) / TURN_RAMP)
            pose[f, 0] = start_pose[0] + w * (TURN_YAW - start_pose[0])
            pose[f, 1:3] = start_pose[1:3] * (1 - w)
        if b < frames:  # ease back into the clip's own motion
            end = pose[b - 1].clone()
            for k, f in enumerate(range(b, min(b + TURN_RAMP, frames))):
                w = (k + 1) / TURN_RAMP
                pose[f, :3] = end[:3] + w * (pose[f, :3] - end[:3])
    blink_at = int(EXTRA_BLINK * VIDEO_FPS)
    profile = torch.tensor([0.35, 0.8, 1.0, 0.9, 0.6, 0.3, 0.1])
    if blink_at < frames:
        n = min(len(profile), frames - blink_at)
        out["blink"][blink_at : blink_at + n] = torch.maximum(out["blink"][blink_at : blink_at + n], profile[:n, None])
    switch = int(EMOTION_SWITCH * VIDEO_FPS)
    if switch < frames:
        out["emotion"][switch:, 0] = float(EMOTIONS.index(EMOTION_TO))
        out["emotion"][switch:, 1] = float(EMOTION_INTENSITY)
    return out


def render_truth(metadata: dict[str, Any], signals: dict[str, torch.Tensor], mouth: torch.Tensor, resolution: int) -> torch.Tensor:
    """Render the held-out identity under ``signals`` (its own mouth track): uint8 ``(T, 3, R, R)``."""
    from eartalk.core.data.synth import Controls, Identity, render_frames

    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in metadata["identity"].items()}
    identity = Identity(**fields)
    controls = Controls(*(np.asarray(signals[n].numpy(), np.float32) for n in ("head_pose", "blink", "gaze")),
                        np.asarray(mouth.numpy(), np.float32), np.asarray(signals["emotion"].numpy(), np.float32))
    frames, _ = render_frames(identity, controls, resolution)
    return frames


def run_demo(
    out: Path,
    preset: str = "tiny",
    clips: int = 200,
    seconds: float = 1.0,
    vae_steps: int = 800,
    steps: int = 2200,
    frames: int = 500,
    seed: int = 0,
    probe: str | Path | None = None,
    progress: bool = True,
    probe_identities: int | None = None,
    probe_epochs: int | None = 9,
    emotion_segments: int = 1,
    vae_focus: float = 0.0,
    ema_decay: float = 0.0,
) -> dict[str, Any]:
    """Run the demo into ``out``, write ``summary.json`` and return the summary (paths, figures, timings).

    ``probe_identities`` / ``probe_epochs``: probe training size when it is trained here (None:
    :class:`~eartalk.metrics.probe.ProbeTraining`'s defaults; the demo trains 9 epochs instead of
    14 to stay within its 10 minutes: emotion is then read less well, see docs/metrics.md). ``emotion_segments``: emotions per
    training clip (several, so the reference frame often shows another emotion than the window).
    ``vae_focus``: the VAE's reconstruction weight around the eyes and mouth (``focus.weight`` of
    the ``vae`` recipe; 0 = the plain L1, the demo's default: at its short budget, 800 VAE + 1,400
    model steps, focus 10 lowered the lip-sync from 0.70 to 0.45; the study's VAE uses it).
    ``ema_decay``: an exponential moving average of the model's weights while it trains (0 = off),
    sampled with when on (the study's ``--ema-decay``).
    """
    from eartalk.core.data.synth import synthesize_dataset
    from eartalk.core.engine.presets import PRESETS
    from eartalk.core.media.io import write_video
    from eartalk.metrics.probe import ProbeTraining, get_or_train_probe, pearson, reading_errors
    from eartalk.recipes.common import read_metrics
    from eartalk.recipes.ema import check_ema_decay
    from eartalk.recipes.study import (
        AUDIO_CONDITIONS,
        block_permutation,
        json_safe,
        load_heldout,
        per_frame_l1_psnr,
        probe_sizes,
        stream_batch,
        train_model,
        train_vae,
        windows,
    )
    from eartalk.recipes.train import load_trained

    check_ema_decay(ema_decay, "demo: --ema-decay")  # before minutes of training, not after them
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    resolution = PRESETS[preset].resolution
    timings: dict[str, float] = {}

    start = time.perf_counter()
    probe_path = Path(probe) if probe else out / "probe.pt"
    reader, probe_info = get_or_train_probe(probe_path, ProbeTraining(**probe_sizes(probe_identities, probe_epochs), seed=seed + 17),
                                            heldout=4, progress=progress)
    timings["probe_s"] = time.perf_counter() - start

    start = time.perf_counter()
    data = synthesize_dataset(out / "data", clips=clips, seconds=seconds, resolution=resolution, seed=seed,
                              emotion_segments=emotion_segments, progress=progress)
    holdout = synthesize_dataset(out / "holdout", clips=1, seconds=frames / VIDEO_FPS, resolution=resolution,
                                 seed=seed + 1000, progress=progress)
    timings["synth_s"] = time.perf_counter() - start

    start = time.perf_counter()
    vae_ckpt = train_vae(data, out / "vae", preset, vae_steps, seed, progress, focus=vae_focus)
    timings["vae_train_s"] = time.perf_counter() - start
    start = time.perf_counter()
    ckpt = train_model(data, out / "model", preset, vae_ckpt, steps, seed, progress, ema_decay=ema_decay)
    timings["model_train_s"] = time.perf_counter() - start

    # The held-out clip through the dataset reader (audio features computed from its speech, as in
    # training); the commanded controls are its own plus the demo's edits, and the truth is
    # rendered from exactly those controls.
    model = load_trained(ckpt)
    item = load_heldout(holdout, model.stack, frames)[0]
    commanded = demo_controls(item["signals"], frames)
    mouth = item["extras"]["mouth"][:frames]  # (T, 2) opening, width
    truth = render_truth(item["meta"]["metadata"], commanded, mouth, resolution)  # (T, 3, R, R) uint8
    reference = item["frames"][0]  # (3, R, R) the first frame, as a user would give a portrait
    shuffled = dict(commanded)
    order = torch.from_numpy(block_permutation(frames, VIDEO_FPS, seed))
    for name in AUDIO_CONDITIONS:
        shuffled[name] = commanded[name][order]
    start = time.perf_counter()
    both, _ = stream_batch(model, torch.stack([reference, reference]), [commanded, shuffled], frames,
                           "generating (own speech + shuffled speech)", progress)
    timings["generate_s"] = time.perf_counter() - start
    video, video_shuffled = both[0], both[1]  # (T, 3, R, R) uint8
    start = time.perf_counter()
    n_fps = min(100, frames)
    stream_batch(model, reference[None], [{k: v[:n_fps] for k, v in commanded.items()}], n_fps, progress=False)
    fps = n_fps / (time.perf_counter() - start)

    side = torch.cat([truth, video], dim=3)  # (T, 3, R, 2R): truth left, generated right
    mp4 = write_video(out / "demo.mp4", side, fps=VIDEO_FPS, audio=item["audio"][: frames * 640])
    sheet = contact_sheet([truth, video], out / "demo_frames.png", columns=10)

    read, read_shuffled = reader.read(video), reader.read(video_shuffled)
    static = reader.read(truth[:1].expand(frames, -1, -1, -1))
    read_truth = reader.read(truth)
    true_opening = mouth[:, 0].numpy()
    want = {"blink": commanded["blink"].numpy(), "gaze": commanded["gaze"].numpy(),
            "emotion": commanded["emotion"][:, 0].numpy(), "mouth": true_opening}
    got = reading_errors(read, want)
    on_truth = reading_errors(read_truth, want)
    yaw = commanded["head_pose"][:, 0].numpy()
    turn = slice(int(TURN_START * VIDEO_FPS) + TURN_RAMP, min(frames, int(TURN_STOP * VIDEO_FPS)))
    after = slice(int(EMOTION_SWITCH * VIDEO_FPS), frames)
    l1, psnr = per_frame_l1_psnr(video, truth)
    early, late = windows(frames)
    with torch.no_grad():
        recon = torch.cat([model.vae.decode(model.vae.encode(item["frames"][a : a + 100][None]))[0]
                           for a in range(0, frames, 100)])
    vae_l1, vae_psnr = per_frame_l1_psnr(to_uint8(recon), to_uint8(item["frames"][:frames]))

    def first_last(run: Path, key: str) -> list[float]:
        points = read_metrics(run).get(key, [])
        return [round(points[0][1], 4), round(points[-1][1], 4)] if points else []

    figures = {
        "drift_l1_late_over_early": float(l1[late].mean() / max(l1[early].mean(), 1e-9)),
        "psnr_late_db": float(psnr[late].mean()),
        "yaw_mae_deg": float(np.abs(read["head_pose"][:, 0] - yaw).mean()),
        "blink_f1": got["blink_f1"],
        "emotion_accuracy": got["emotion_accuracy"],
        "mouth_corr": got["mouth_corr"],
        "mouth_corr_shuffled": pearson(read_shuffled["mouth"], true_opening),
        "mouth_corr_static": pearson(static["mouth"], true_opening),
        "train_minutes": (timings["vae_train_s"] + timings["model_train_s"]) / 60,
        "fps": fps,
        "gaze_error": got["gaze_error"],
        "yaw_mae_deg_in_turn": float(np.abs(read["head_pose"][turn, 0] - yaw[turn]).mean()) if turn.stop > turn.start else None,
        "yaw_read_in_turn_deg": float(read["head_pose"][turn, 0].mean()) if turn.stop > turn.start else None,
        "emotion_accuracy_after_switch": float((read["emotion"][after] == commanded["emotion"][after, 0].numpy()).mean())
        if after.stop > after.start else None,
        "l1_early": float(l1[early].mean()), "l1_late": float(l1[late].mean()),
        "psnr_early_db": float(psnr[early].mean()),
        "vae_l1": float(vae_l1.mean()), "vae_psnr_db": float(vae_psnr.mean()),
    }
    summary = {
        **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in figures.items()},
        "fidelity": "proxy (synthetic probe on synthetic faces; not a paper metric)",
        "probe_on_truth": {k: round(v, 4) for k, v in on_truth.items()},
        "probe_heldout_accuracy": probe_info.get("heldout_accuracy", {}),
        "budget": {"clips": clips, "seconds": seconds, "emotion_segments": emotion_segments, "vae_steps": vae_steps,
                   "vae_focus": vae_focus, "ema_decay": ema_decay,
                   "steps": steps, "preset": preset,
                   "frames": frames},
        "video": str(mp4),
        "frames_png": str(sheet),
        "checkpoints": {"vae": str(vae_ckpt), "model": str(ckpt), "probe": str(probe_path)},
        "vae_loss_first_last": first_last(out / "vae", "train/loss"),
        "model_loss_first_last": first_last(out / "model", "train/loss"),
        "loss_plots": [str(out / "vae" / "loss.png"), str(out / "model" / "loss.png")],
        **{k: round(v, 1) for k, v in timings.items()},
    }
    summary["total_s"] = round(sum(timings.values()) + n_fps / fps, 1)
    summary["summary_json"] = str(out / "summary.json")
    summary = json_safe(summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
