"""Offline generation: portrait + speech (+ controls) -> talking-head mp4.

It drives the same streaming session a live server would use, one frame at a time, so what runs
here is what streams. Controls are given as ``NAME=VALUE[@START:STOP]``:

* ``head_pose=pose.csv`` -- per-frame values from a file (CSV/JSON/NPY) or a driving video;
* ``emotion=happy@50:120`` -- a label on frames 50-119;
* ``gaze=0,0,0,0@100:`` -- a constant from frame 100 on;
* ``blink=off@0:40`` -- absent (null token) on frames 0-39.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from eartalk.core.errors import InputError
from eartalk.core.types import SAMPLES_PER_FRAME, VIDEO_FPS, to_model_range, to_uint8

log = logging.getLogger(__name__)

_CONTROL = re.compile(r"^(?P<name>[A-Za-z_][\w-]*)=(?P<value>.*?)(?:@(?P<start>\d*):(?P<stop>\d*))?$")


@attrs.frozen
class ControlEdit:
    """One ``--control`` argument, parsed."""

    name: str
    value: Any  # None = absent
    start: int = 0
    stop: int | None = None


def parse_control(text: str) -> ControlEdit:
    """Parse ``NAME=VALUE[@START:STOP]`` (see module docstring)."""
    match = _CONTROL.match(text.strip())
    if not match:
        raise InputError(f"--control {text!r}: expected NAME=VALUE[@START:STOP], e.g. emotion=happy@25:100")
    raw = match["value"].strip()
    value: Any
    if raw.lower() in ("off", "none", "null", ""):
        value = None
    elif Path(raw).expanduser().suffix and Path(raw).expanduser().exists():
        value = str(Path(raw).expanduser())
    elif raw.startswith("{"):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as err:
            raise InputError(f"--control {text!r}: invalid JSON value: {err}") from None
    elif re.fullmatch(r"[-+0-9.eE, ]+", raw):
        value = [float(v) for v in raw.split(",") if v.strip()]
    elif Path(raw).suffix.lower() in (".csv", ".json", ".npy", ".mp4", ".mov", ".wav"):
        raise InputError(f"--control {text!r}: file {raw} does not exist")
    else:
        value = raw
    start = int(match["start"]) if match["start"] else 0
    stop = int(match["stop"]) if match["stop"] else None
    if stop is not None and stop <= start:
        raise InputError(f"--control {text!r}: empty frame range {start}:{stop}")
    return ControlEdit(match["name"], value, start, stop)


def parse_past_end(items: Sequence[str]) -> dict[str, str]:
    """``["head_pose=hold", "blink=loop"]`` (``--past-end``) -> ``{"head_pose": "hold", ...}``.

    What a control's per-frame values (a file, a driving video) do when shorter than the video:
    ``absent`` (the default: the control is absent, or what was set before shows again), ``hold``
    the last value, or ``loop`` from the first.
    """
    from eartalk.conditions.timeline import check_past_end

    out = {}
    for item in items:
        name, sep, policy = item.partition("=")
        if not sep or not name.strip():
            raise InputError(f"--past-end {item!r}: expected NAME=POLICY, e.g. head_pose=hold (policies: absent, hold, loop)")
        out[name.strip()] = check_past_end(policy.strip(), f"--past-end {item!r}")
    return out


def load_reference(portrait: str | Path, resolution: int, landmarker: str | None = None) -> torch.Tensor:
    """Face crop of a portrait as ``(3, R, R)`` in [-1, 1] (clear error when no face is found)."""
    from eartalk.core.media.io import read_portrait

    return to_model_range(read_portrait(portrait, resolution, landmarker))  # (3, R, R)


def run_session(
    model: Any,
    reference: torch.Tensor,
    num_frames: int,
    controls: Sequence[ControlEdit],
    audio_signals: dict[str, torch.Tensor] | None = None,
    sampling: dict[str, Any] | None = None,
    progress: bool = True,
    progress_every: int = 25,
    past_end: Mapping[str, str] | None = None,
) -> torch.Tensor:
    """Generate ``num_frames`` frames with a streaming session; returns uint8 ``(T, 3, R, R)``.

    ``past_end`` maps a control to what its per-frame values (a file, a driving video) do when
    shorter than the video: ``"absent"`` (default), ``"hold"`` the last row or ``"loop"``; a
    warning says so once (see :mod:`eartalk.conditions.timeline`).

    Progress: a rich bar on a terminal; otherwise a log line every ``progress_every`` frames with
    the frames done and the frame rate; the final frame rate at the end. Each control's meaning is
    logged first (e.g. ``blink=off``: absent, the learned null token).
    """
    from rich.console import Console
    from rich.progress import Progress

    session = model.session(reference, **(sampling or {}))
    for name, policy in (past_end or {}).items():
        session.timeline.set_past_end(name, policy)
    for name, signal in (audio_signals or {}).items():
        session.set_control(name, signal, start=0)
    for edit in controls:
        if edit.value is None:
            session.clear_control(edit.name, start=edit.start, stop=edit.stop)
        else:
            session.set_control(edit.name, edit.value, start=edit.start, stop=edit.stop)
        if progress:  # say what each control does (e.g. what `blink=off` means)
            log.info("control %s", model.stack.plugin(edit.name).explain(edit.value, edit.start, edit.stop))
    frames = []
    interactive = progress and sys.stderr.isatty()
    every = max(1, int(progress_every))
    started = time.perf_counter()
    with Progress(console=Console(stderr=True), disable=not interactive, transient=True) as bar:
        task = bar.add_task("generating frames", total=num_frames)
        for t in range(num_frames):
            out = session.step()
            frames.append(to_uint8(out.pixels[0].float().cpu()))  # (3, R, R)
            bar.advance(task)
            done = t + 1
            if progress and not interactive and (done % every == 0 or done == num_frames):
                elapsed = max(time.perf_counter() - started, 1e-9)
                log.info("generated %d/%d frames (%.1f fps)", done, num_frames, done / elapsed)
    elapsed = max(time.perf_counter() - started, 1e-9)
    if progress:
        log.info("generated %d frames in %.1f s: %.2f fps (real time is %d fps)", num_frames, elapsed,
                 num_frames / elapsed, VIDEO_FPS)
    return torch.stack(frames)


def generate_video(
    checkpoint: str | Path,
    portrait: str | Path,
    audio: str | Path | None,
    out: str | Path,
    controls: Sequence[str] = (),
    num_frames: int | None = None,
    sampling: dict[str, Any] | None = None,
    landmarker: str | None = None,
    progress: bool = True,
    past_end: Mapping[str, str] | None = None,
    device: str = "cpu",
    precision: str = "32-true",
) -> Path:
    """Generate a talking-head video; the audio file drives every audio-based condition.

    ``device``: torch device (``auto``: CUDA when available); ``precision``: ``32-true``,
    ``bf16-mixed`` (autocast) or ``bf16-true`` (bfloat16 weights). The session's state stays on the device.

    ``past_end``: per control, what per-frame values shorter than the video do past their end
    (``"absent"``, ``"hold"``, ``"loop"``; see :func:`parse_past_end`).

    Returns:
        The written mp4 path (H.264 with the audio muxed in sync).
    """
    from eartalk.core.engine.checkpoint import load_model
    from eartalk.core.media.io import read_audio, write_video

    edits = [parse_control(c) for c in controls]
    from eartalk.core.engine.devices import autocast, place, resolve_device

    device = resolve_device(device)
    model = place(load_model(checkpoint), device, precision)
    for edit in edits:
        if edit.name not in model.stack.plugins:  # fail before any work
            raise InputError(
                f"--control {edit.name}=...: {checkpoint} never learnt the control {edit.name!r}; it was trained with "
                f"{', '.join(model.stack.names)} (fine-tune it with {edit.name!r} added: docs/training.md)"
            )
    reference = load_reference(portrait, model.arch.resolution, landmarker)
    wave = None
    audio_signals: dict[str, torch.Tensor] = {}
    if audio is not None:
        wave = read_audio(audio)
        frames_from_audio = wave.shape[0] // SAMPLES_PER_FRAME
        num_frames = num_frames or frames_from_audio
        for name, plugin in model.stack.plugins.items():
            if "audio" in plugin.requires:
                audio_signals[name] = plugin.values(str(audio), num_frames)
    if not num_frames:
        raise InputError("give --audio or --frames: nothing tells how long the video is")
    for name in past_end or {}:
        model.stack.plugin(name)
    with autocast(device, precision):
        video = run_session(model, reference, num_frames, edits, audio_signals, sampling, progress, past_end=past_end)
    if wave is not None:
        wave = wave[: num_frames * SAMPLES_PER_FRAME]
    return write_video(out, video, fps=VIDEO_FPS, audio=wave)
