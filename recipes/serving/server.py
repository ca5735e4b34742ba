"""The ``eartalk serve`` server: aiohttp, one streaming session per WebSocket.

Threads and queues (one session):

* the **event loop** (aiohttp) reads the socket, checks every message (JSON, sizes, control
  names and values) and answers errors at once; it never runs the model;
* a **session thread** (a one-worker executor) prepares the inputs (image decoding and face
  check, audio decoding and features), opens the :class:`StreamingSession` and steps it: before
  each frame it applies the control changes received since the last one, acknowledging each with
  the index of the frame it takes effect at;
* a bounded **send queue** (``queue_frames`` items) carries acks, frames and errors, in order,
  from the thread to the socket. Policy when it is full (a slow client): *backpressure*, the
  session thread waits, so that session slows down and nothing is dropped (no A/V holes); the
  other sessions run on their own threads and are not affected. A client that reads nothing for
  ``stall_seconds`` is disconnected with the error ``too_slow``.

Closing the socket, at any moment, ends the thread after at most the frame it is making, removes
the session's private upload folder and frees its slot.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import hmac
import io
import itertools
import json
import logging
import math
import queue
import re
import shutil
import signal
import tempfile
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from eartalk.core.errors import EartalkError, InputError
from eartalk.core.types import AUDIO_SAMPLE_RATE, SAMPLES_PER_FRAME, VIDEO_FPS, to_model_range, to_uint8
from eartalk.recipes.serving import wire

log = logging.getLogger("eartalk.serve")

STATIC = Path(__file__).resolve().parent / "static"
BUNDLED_SPEECH_SECONDS = 20.0
_LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9_:+-]{0,63}$")  # label values: never a path (no '.', '/', '\\')
_MB = 2**20
MAX_AUDIO_CHUNKS = 256  # live-audio chunks waiting for the session thread, per session
VOICE = "voice_activity"  # the control the listening mode drives


@attrs.frozen
class ServeConfig:
    """Settings of ``eartalk serve`` (every limit is configurable from the command line).

    Attributes:
        host: address to bind (127.0.0.1: this machine only).
        port: TCP port (0: any free port).
        max_sessions: concurrent sessions; the next connection is refused with ``busy``.
        token: when set, every HTTP and WebSocket request must carry it.
        max_image_bytes: largest portrait upload.
        max_audio_bytes: largest audio upload.
        max_frames: most frames of one stream (at 25 fps).
        queue_frames: send-queue length per session (backpressure beyond it).
        stall_seconds: a client that takes nothing from a full queue this long is disconnected.
        jpeg_quality: default JPEG quality (a start message may ask for another, 10-95).
        landmarker: MediaPipe ``face_landmarker.task`` for portrait uploads (default:
            ``$EARTALK_FACE_LANDMARKER``).
        threads: torch intra-op threads (None: torch's choice; 1 is best with several sessions).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_sessions: int = 4
    token: str | None = None
    max_image_bytes: int = 8 * _MB
    max_audio_bytes: int = 32 * _MB
    max_frames: int = 25 * 600
    queue_frames: int = 8
    stall_seconds: float = 10.0
    jpeg_quality: int = 85
    landmarker: str | None = None
    threads: int | None = None

    def __attrs_post_init__(self) -> None:
        from eartalk.core.errors import ConfigError

        for key in ("max_sessions", "max_image_bytes", "max_audio_bytes", "max_frames", "queue_frames"):
            if getattr(self, key) < 1:
                raise ConfigError(f"serve: {key} must be >= 1, got {getattr(self, key)}")
        if not 10 <= self.jpeg_quality <= 95:
            raise ConfigError(f"serve: jpeg_quality must be in [10, 95], got {self.jpeg_quality}")
        if self.token is not None and not self.token:
            raise ConfigError("serve: --token must not be empty")


class ClientError(EartalkError):
    """A bad message from a client: answered with an error message, the session goes on.

    Attributes:
        code: machine-readable error code (docs/serving.md lists them).
    """

    def __init__(self, code: str, message: str, ident: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.id = ident


# --------------------------------------------------------------------------------------------
# the model and what the page needs to know about it
# --------------------------------------------------------------------------------------------
def load_model(checkpoint: str | Path | None = None, preset: str | None = None, device: str = "cpu", seed: int = 0) -> Any:
    """A trained model (``checkpoint``) or untrained weights of a preset (to try the plumbing)."""
    from eartalk.core.errors import ConfigError

    if (checkpoint is None) == (preset is None):
        raise ConfigError("serve: give exactly one of --checkpoint CKPT or --preset NAME")
    if checkpoint is not None:
        from eartalk.recipes.train import load_trained

        return load_trained(checkpoint, map_location=device)
    from eartalk.core.engine.bench import build_stack
    from eartalk.core.engine.model import EarTalkModel
    from eartalk.core.engine.presets import get_arch

    torch.manual_seed(seed)
    arch = get_arch(preset)
    return EarTalkModel(arch, build_stack(arch, None)).to(device).eval()


def _column_docs(plugin: Any) -> dict[str, Any]:
    docs = {c.name: c for c in getattr(plugin, "column_docs", ())}
    return docs


def column_range(plugin: Any, column: str) -> tuple[float | None, float | None, str]:
    """``(low, high, unit)`` a plugin documents for a column (None: unbounded)."""
    docs = _column_docs(plugin)
    doc = docs.get(column, docs.get("*"))
    if doc is None or doc.range is None:
        return None, None, "" if doc is None else doc.unit
    low, high = doc.range
    return low, high, doc.unit


def _finite_row(plugin: Any, value: Any) -> list[float] | None:
    try:
        row = plugin.values(value)
    except Exception:  # noqa: BLE001 - a label that does not parse is just not offered
        return None
    if row.dim() != 1 or not torch.isfinite(row).all():
        return None
    return [round(float(v), 4) for v in row]


def describe_controls(stack: Any) -> list[dict[str, Any]]:
    """Every control of the stack as the page builds its widgets from it (docs/serving.md).

    Sliders for bounded continuous columns (controls with at most 8 columns), buttons for labels
    and for integer columns (units ``index``/``level``) that no label sets, and a start row.
    """
    out = []
    for name, plugin in stack.plugins.items():
        columns = list(plugin.columns)
        labels = {}
        for label in getattr(plugin, "labels", {}) or {}:
            row = _finite_row(plugin, label)
            if row is not None:
                labels[label] = row
        neutral = list(getattr(plugin, "neutral", ()) or ())
        initial = [float(v) for v in neutral] if len(neutral) == plugin.signal_dim else None
        if initial is None and labels:
            initial = next(iter(labels.values()))
        sliders, steps = [], []
        for i, col in enumerate(columns if plugin.signal_dim <= 8 else []):
            low, high, unit = column_range(plugin, col)
            if low is None or high is None:
                continue
            if unit in ("index", "level"):
                values = list(range(int(low), int(high) + 1))
                if not set(values) <= {row[i] for row in labels.values()} and len(values) <= 10:  # labels miss some
                    steps.append({"column": col, "index": i, "values": values})
                continue
            sliders.append({"column": col, "index": i, "min": low, "max": high, "unit": unit,
                            "step": (high - low) / 100})
        if initial is None and sliders and len(sliders) == plugin.signal_dim:
            initial = [(s["min"] + s["max"]) / 2 for s in sliders]
        out.append({
            "name": name,
            "description": getattr(plugin, "description", ""),
            "signal_dim": plugin.signal_dim,
            "columns": columns if plugin.signal_dim <= 64 else [],
            "audio_driven": "audio" in plugin.requires,
            "lookahead_frames": int(plugin.lookahead_frames),
            "labels": labels,
            "sliders": sliders,
            "steps": steps,
            "initial": initial,
        })
    return out


def parse_control_value(plugin: Any, value: Any) -> torch.Tensor:
    """Check a control value from a client and turn it into a constant row ``(D,)``.

    Accepted: a number, a list of ``D`` numbers, a mapping ``{column: number}`` or a label (a
    word such as ``happy`` or ``sad:3``; never a path: files cannot be named over the socket).
    Values outside a column's documented range are refused.

    Raises:
        ClientError: code ``bad_value`` with what was wrong and what is accepted.
    """
    name = plugin.name
    if isinstance(value, bool):
        raise ClientError("bad_value", f"control {name!r}: true/false is not a value; give numbers, a mapping or a label")
    if isinstance(value, str):
        if not _LABEL.match(value):
            raise ClientError("bad_value", f"control {name!r}: {value[:40]!r} is not a label (labels are words such as "
                                           "'happy' or 'sad:3'; files cannot be named over the socket)")
    elif isinstance(value, (int, float)):
        value = [float(value)]
    elif isinstance(value, list):
        if len(value) != plugin.signal_dim or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ClientError("bad_value", f"control {name!r}: a list needs {plugin.signal_dim} numbers "
                                           f"({', '.join(plugin.columns[:8])}{', ...' if plugin.signal_dim > 8 else ''})")
    elif isinstance(value, Mapping):
        unknown = [k for k in value if k not in plugin.columns]
        if unknown:
            raise ClientError("bad_value", f"control {name!r}: unknown columns {unknown[:5]}; columns: {plugin.columns[:12]}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()):
            raise ClientError("bad_value", f"control {name!r}: mapping values must be numbers")
    else:
        raise ClientError("bad_value", f"control {name!r}: unsupported value of type {type(value).__name__}")
    if not isinstance(value, str):
        numbers = value.values() if isinstance(value, Mapping) else value
        if not all(math.isfinite(v) for v in numbers):
            raise ClientError("bad_value", f"control {name!r}: values must be finite numbers (no NaN or infinity); "
                                           "send a clear message to make the control absent")
    try:
        row = plugin.values(value)
    except EartalkError as err:
        raise ClientError("bad_value", str(err)) from None
    if row.dim() != 1:
        raise ClientError("bad_value", f"control {name!r}: give a constant (one value per column), not per-frame values")
    for i, col in enumerate(plugin.columns):
        v = float(row[i])
        if math.isnan(v):
            continue
        low, high, unit = column_range(plugin, col)
        if (low is not None and v < low) or (high is not None and v > high):
            text = f"[{'' if low is None else low}, {'' if high is None else high}]"
            raise ClientError("out_of_range", f"control {name!r}: {col}={v:g} is out of range {text}"
                                              f"{' ' + unit if unit else ''}")
    return row


def bundled_face(seed: int, resolution: int) -> torch.Tensor:
    """The bundled portrait number ``seed``: a synthetic face rendered now, ``(3, R, R)`` uint8."""
    from eartalk.core.data.synth import Controls, Identity, render_frames

    identity = Identity.sample(np.random.default_rng(seed))
    frames, _ = render_frames(identity, Controls.neutral(1), resolution)
    return frames[0]


def bundled_speech(seed: int, seconds: float = BUNDLED_SPEECH_SECONDS) -> torch.Tensor:
    """Synthetic speech in the voice of bundled face ``seed``: ``(S,)`` float32 at 16 kHz."""
    from eartalk.core.data.synth import Identity, synthesize_speech

    rng = np.random.default_rng(seed)
    identity = Identity.sample(rng)
    audio, *_ = synthesize_speech(max(1, round(seconds * VIDEO_FPS)), identity, rng)
    return torch.from_numpy(np.asarray(audio, np.float32))


def encode_jpeg(pixels: torch.Tensor, quality: int) -> bytes:
    """``(3, R, R)`` uint8 -> JPEG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy()).save(buffer, "JPEG", quality=int(quality))
    return buffer.getvalue()


class ServedModel:
    """The model shared by every session, with caches of the bundled inputs and the face checker."""

    def __init__(self, model: Any, config: ServeConfig) -> None:
        self.model = model
        self.config = config
        self.resolution = int(model.arch.resolution)
        self.controls = describe_controls(model.stack)
        audio = [n for n, p in model.stack.plugins.items() if hasattr(p, "stream") and "audio" in p.requires]
        self.audio_plugin = audio[0] if audio else None
        lookahead = model.stack.plugins[self.audio_plugin].lookahead_frames if self.audio_plugin else 0
        self.audio_lookahead = int(lookahead)
        self._lock = threading.Lock()
        self._faces: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._speech: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._analyzer: Any = None
        self._face_lock = threading.Lock()

    def info(self) -> dict[str, Any]:
        c = self.config
        return {
            "protocol": wire.PROTOCOL_VERSION,
            "model": {"preset": self.model.arch.name, "resolution": self.resolution, "fps": VIDEO_FPS,
                      "window": self.model.arch.window},
            "audio": {"sample_rate": AUDIO_SAMPLE_RATE, "samples_per_frame": SAMPLES_PER_FRAME,
                      "plugin": self.audio_plugin, "lookahead_frames": self.audio_lookahead,
                      "lookahead_ms": self.audio_lookahead * 1000 // VIDEO_FPS},
            "controls": self.controls,
            "limits": {"max_sessions": c.max_sessions, "max_image_bytes": c.max_image_bytes,
                       "max_audio_bytes": c.max_audio_bytes, "max_frames": c.max_frames,
                       "queue_frames": c.queue_frames, "stall_seconds": c.stall_seconds,
                       "bundled_speech_seconds": BUNDLED_SPEECH_SECONDS},
        }

    def face(self, seed: int) -> torch.Tensor:
        with self._lock:
            if seed in self._faces:
                self._faces.move_to_end(seed)
                return self._faces[seed]
        face = bundled_face(seed, self.resolution)
        with self._lock:
            self._faces[seed] = face
            while len(self._faces) > 16:
                self._faces.popitem(last=False)
        return face

    def speech(self, seed: int) -> torch.Tensor:
        with self._lock:
            if seed in self._speech:
                self._speech.move_to_end(seed)
                return self._speech[seed]
        audio = bundled_speech(seed)
        with self._lock:
            self._speech[seed] = audio
            while len(self._speech) > 4:
                self._speech.popitem(last=False)
        return audio

    def portrait(self, path: Path) -> torch.Tensor:
        """Face crop ``(3, R, R)`` uint8 of an uploaded image (InputError: not an image, no face)."""
        from eartalk.core.media.face import FaceAnalyzer
        from eartalk.core.media.io import read_image, read_portrait

        read_image(path)  # not an image: say so before looking for the face model
        with self._face_lock:  # one MediaPipe graph, used by one thread at a time
            if self._analyzer is None:
                self._analyzer = FaceAnalyzer(self.config.landmarker)
            return read_portrait(path, self.resolution, self._analyzer)

    def warm_up(self) -> None:
        """Render bundled face 0, synthesise its speech and run a few frames (first-use costs)."""
        face = to_model_range(self.face(0))
        self.speech(0)
        session = self.model.session(face.to(next(self.model.parameters()).device))
        for _ in range(2):
            session.step()

    def close(self) -> None:
        if self._analyzer is not None:
            self._analyzer.close()


# --------------------------------------------------------------------------------------------
# one session
# --------------------------------------------------------------------------------------------
class _Closed(Exception):
    """The socket is gone: the session thread stops."""


class _TooSlow(Exception):
    """The client took nothing from a full queue for ``stall_seconds``."""


START_KEYS = {"type", "portrait", "face_seed", "speech", "seconds", "frames", "pace", "quality", "sampling", "controls", "past_end"}
SAMPLING_KEYS = {"seed", "steps", "denoise_steps", "cfg", "cfg_separate", "temperature"}


@attrs.frozen
class StartRequest:
    """A checked ``start`` message."""

    portrait: str
    face_seed: int
    speech: str
    seconds: float
    frames: int | None
    pace: str
    quality: int
    sampling: dict[str, Any]
    controls: tuple[tuple[str, torch.Tensor | None], ...]


def _int(value: Any, key: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer() or not low <= value <= high:
        raise ClientError("bad_message", f"start: {key} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


class Session:
    """One WebSocket connection: uploads, at most one stream at a time, controls."""

    def __init__(self, server: Server, sid: int, ws: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.server, self.sid, self.ws, self.loop = server, sid, ws, loop
        self.config = server.config
        self.tmp = Path(tempfile.mkdtemp(prefix=f"session-{sid}-", dir=server.tmp_root))  # mode 0700
        self.uploads: dict[str, Path] = {}
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"eartalk-session-{sid}")
        self.out: asyncio.Queue = asyncio.Queue(maxsize=self.config.queue_frames)
        self.controls: queue.SimpleQueue = queue.SimpleQueue()
        self.audio_in: queue.Queue = queue.Queue(maxsize=MAX_AUDIO_CHUNKS)  # live audio, bounded
        self.microphone = False  # the running stream reads live audio
        self.voice_by_user = False  # the client set or cleared voice_activity (the live detector stops driving it)
        self.closed = threading.Event()
        self.stop_requested = threading.Event()
        self.job: asyncio.Future | None = None
        self.running = False  # a stream is being made (False from just before its last message)
        self.ids = itertools.count(1)

    # -- event-loop side ---------------------------------------------------------------------
    @property
    def streaming(self) -> bool:
        return self.running

    async def handle_text(self, text: str) -> None:
        try:
            message = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ClientError("bad_json", f"malformed JSON ({err.msg} at character {err.pos}); every text message "
                                          "is one JSON object with a \"type\"") from None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise ClientError("bad_message", "every text message is a JSON object with a string \"type\" "
                                             "(start, control, clear, stop, audio_end, ping)")
        kind = message["type"]
        if kind == "start":
            await self.start(message)
        elif kind in ("control", "clear"):
            self.control(message, clear=kind == "clear")
        elif kind == "stop":
            if self.streaming:
                self.stop_requested.set()
                self._end_audio()
        elif kind == "audio_end":
            self._end_audio()
        elif kind == "ping":
            await self.ws.send_json({"type": "pong", "id": message.get("id"), "streaming": self.streaming})
        else:
            raise ClientError("bad_message", f"unknown message type {kind!r}; use start, control, clear, stop, audio_end or ping")

    def _end_audio(self) -> None:
        with contextlib.suppress(queue.Full):
            self.audio_in.put_nowait(None)

    async def handle_binary(self, data: bytes) -> None:
        if not data:
            raise ClientError("bad_message", "empty binary message")
        kind, payload = data[0], data[1:]
        if kind == wire.AUDIO_CHUNK:
            if not self.microphone:
                raise ClientError("not_streaming", "live audio needs a running stream started with speech 'microphone'")
            if not self.streaming:
                return  # a late chunk of a microphone stream that has ended
            if len(payload) % 4 or len(payload) > 4 * AUDIO_SAMPLE_RATE:
                raise ClientError("bad_upload", "audio chunk: at most 1 s of 16 kHz mono float32 little-endian samples "
                                                "(4 bytes each)")
            if len(payload) % 4:
                raise ClientError("bad_upload", "audio chunk: 16 kHz mono float32 little-endian samples (4 bytes each)")
            samples = np.frombuffer(payload, dtype="<f4").astype(np.float32)
            if not np.isfinite(samples).all():
                raise ClientError("bad_upload", "audio chunk: samples must be finite")
            try:
                self.audio_in.put_nowait(np.clip(samples, -1.0, 1.0))
            except queue.Full:
                raise ClientError("too_large", f"live audio arrives faster than frames are made: {MAX_AUDIO_CHUNKS} "
                                               "chunks wait already; this chunk was dropped") from None
            return
        what = {wire.UPLOAD_PORTRAIT: ("portrait", self.config.max_image_bytes),
                wire.UPLOAD_AUDIO: ("audio", self.config.max_audio_bytes)}.get(kind)
        if what is None:
            raise ClientError("bad_message", f"unknown binary message kind 0x{kind:02x}; use 0x01 portrait, "
                                             "0x02 audio file, 0x03 audio chunk")
        name, limit = what
        if len(payload) > limit:
            raise ClientError("too_large", f"{name} upload is {len(payload) / _MB:.1f} MiB; this server takes at most "
                                           f"{limit / _MB:.1f} MiB (--max-{'image' if name == 'portrait' else 'audio'}-mb)")
        if not payload:
            raise ClientError("bad_upload", f"{name} upload is empty")
        path = self.tmp / name  # the server names the file; nothing the client says reaches the file system
        await self.loop.run_in_executor(None, path.write_bytes, payload)
        self.uploads[name] = path
        await self.ws.send_json({"type": "uploaded", "kind": name, "bytes": len(payload)})

    def _check_start(self, m: dict[str, Any]) -> StartRequest:
        unknown = sorted(set(m) - START_KEYS)
        if unknown:
            raise ClientError("bad_message", f"start: unknown keys {unknown}; known: {sorted(START_KEYS - {'type'})}")
        portrait = m.get("portrait", "bundled")
        if portrait not in ("bundled", "upload"):
            raise ClientError("bad_message", f"start: portrait must be 'bundled' or 'upload', got {portrait!r}")
        if portrait == "upload" and "portrait" not in self.uploads:
            raise ClientError("bad_message", "start: portrait 'upload' but no portrait was uploaded (binary message 0x01 + image)")
        speech = m.get("speech", "bundled")
        if speech not in ("bundled", "upload", "microphone", "none"):
            raise ClientError("bad_message", f"start: speech must be bundled, upload, microphone or none, got {speech!r}")
        if speech == "upload" and "audio" not in self.uploads:
            raise ClientError("bad_message", "start: speech 'upload' but no audio was uploaded (binary message 0x02 + file)")
        if speech == "microphone" and self.server.model.audio_plugin is None:
            raise ClientError("bad_message", "start: this model has no streaming audio condition; speech 'microphone' is unavailable")
        seconds = m.get("seconds", 8.0)
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0.04 <= seconds <= BUNDLED_SPEECH_SECONDS:
            raise ClientError("bad_message", f"start: seconds (of bundled speech) must be in [0.04, {BUNDLED_SPEECH_SECONDS:g}], got {seconds!r}")
        frames = m.get("frames")
        frames = None if frames is None else _int(frames, "frames", 1, self.config.max_frames)
        pace = m.get("pace", "realtime")
        if pace not in ("realtime", "fast"):
            raise ClientError("bad_message", f"start: pace must be 'realtime' or 'fast', got {pace!r}")
        sampling = m.get("sampling") or {}
        if not isinstance(sampling, dict) or set(sampling) - SAMPLING_KEYS:
            raise ClientError("bad_message", f"start: sampling is a mapping with keys from {sorted(SAMPLING_KEYS)}")
        try:
            from eartalk.core.engine.presets import SamplingConfig

            SamplingConfig(**{k: v for k, v in sampling.items()})
        except (TypeError, EartalkError) as err:
            raise ClientError("bad_message", f"start: sampling: {err}") from None
        unknown = sorted(set(sampling.get("cfg_separate") or {}) - set(self.server.model.model.stack.names))
        if unknown:
            raise ClientError("bad_message", f"start: sampling.cfg_separate names {unknown}, not controls of this model "
                                             f"({', '.join(self.server.model.model.stack.names)})")
        controls = []
        for item in m.get("controls") or []:
            if not isinstance(item, dict) or "name" not in item:
                raise ClientError("bad_message", "start: controls is a list of {\"name\": ..., \"value\": ...}")
            plugin = self._plugin(item["name"])
            value = item.get("value")
            controls.append((plugin.name, None if value is None else parse_control_value(plugin, value)))
        return StartRequest(
            portrait, _int(m.get("face_seed", 0), "face_seed", 0, 9999), speech, float(seconds), frames, pace,
            _int(m.get("quality", self.config.jpeg_quality), "quality", 10, 95), dict(sampling), tuple(controls),
        )

    async def start(self, message: dict[str, Any]) -> None:
        if self.streaming:
            raise ClientError("busy_stream", "a stream is running on this socket; send {\"type\": \"stop\"} first")
        request = self._check_start(message)
        self.stop_requested.clear()
        while not self.audio_in.empty():
            self.audio_in.get_nowait()
        while not self.controls.empty():
            self.controls.get_nowait()
        self.running = True
        self.microphone = request.speech == "microphone"
        self.job = asyncio.wrap_future(self.executor.submit(self._run, request))

    def _plugin(self, name: Any) -> Any:
        stack = self.server.model.model.stack
        if not isinstance(name, str) or name not in stack.plugins:
            raise ClientError("unknown_control", f"unknown control {str(name)[:40]!r}; this model's controls: {', '.join(stack.names)}")
        return stack.plugins[name]

    def control(self, message: dict[str, Any], clear: bool) -> None:
        ident = message.get("id")
        if ident is None:
            ident = next(self.ids)
        elif not isinstance(ident, (int, str)) or isinstance(ident, bool) or len(str(ident)) > 64:
            raise ClientError("bad_message", "id must be a number or a string of at most 64 characters")
        try:
            plugin = self._plugin(message.get("name"))
            row = None if clear else parse_control_value(plugin, message.get("value"))
            if not self.streaming:
                raise ClientError("not_streaming", "no stream is running; send start first (initial controls go in start.controls)")
        except ClientError as err:
            err.id = ident
            raise
        self.controls.put((plugin.name, row, ident, time.perf_counter()))

    async def send_loop(self) -> None:
        """Move items from the send queue to the socket until the session ends."""
        try:
            while True:
                item = await self.out.get()
                if item[0] == "json":
                    await self.ws.send_json(item[1])
                else:
                    _, index, gen_ms, begun, audio, jpeg = item
                    age_ms = (time.perf_counter() - begun) * 1000
                    await self.ws.send_bytes(wire.pack_frame(index, gen_ms, age_ms, audio, jpeg))
        except (ConnectionResetError, RuntimeError, OSError):  # the client vanished: end the session
            self.closed.set()
            with contextlib.suppress(Exception):
                await self.ws.close()

    async def close(self) -> None:
        """Stop the thread (after at most one frame), remove the uploads, free the slot."""
        self.closed.set()
        self.stop_requested.set()
        self._end_audio()
        if self.job is not None:
            with contextlib.suppress(Exception):
                await self.job
        self.executor.shutdown(wait=False)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.uploads.clear()

    # -- session-thread side -----------------------------------------------------------------
    def _emit(self, item: tuple) -> None:
        future = asyncio.run_coroutine_threadsafe(self.out.put(item), self.loop)
        waited = 0.0
        while True:
            try:
                future.result(timeout=0.1)
                return
            except concurrent.futures.TimeoutError:
                waited += 0.1
                if self.closed.is_set():
                    future.cancel()
                    raise _Closed from None
                if waited >= self.config.stall_seconds:
                    future.cancel()
                    raise _TooSlow from None

    def _emit_json(self, message: dict[str, Any]) -> None:
        self._emit(("json", message))

    def _prepare(self, request: StartRequest) -> tuple[torch.Tensor, torch.Tensor | None, int | None]:
        served, config = self.server.model, self.config
        if request.portrait == "bundled":
            face = served.face(request.face_seed)
        else:
            face = served.portrait(self.uploads["portrait"])
        wave = None
        if request.speech == "bundled":
            wave = served.speech(request.face_seed)[: round(request.seconds * VIDEO_FPS) * SAMPLES_PER_FRAME]
        elif request.speech == "upload":
            from eartalk.core.media.io import read_audio

            wave = read_audio(self.uploads["audio"])
        frames = request.frames
        if wave is not None:
            audio_frames = wave.shape[0] // SAMPLES_PER_FRAME
            if audio_frames < 1:
                raise InputError(f"the audio is {wave.shape[0] / AUDIO_SAMPLE_RATE * 1000:.0f} ms long; give at least 40 ms")
            frames = min(frames or audio_frames, audio_frames)
        frames = min(frames or config.max_frames, config.max_frames)
        return to_model_range(face), wave, frames

    def _apply_controls(self, session: Any) -> None:
        while True:
            try:
                name, row, ident, received = self.controls.get_nowait()
            except queue.Empty:
                return
            if row is None:
                session.clear_control(name)
            else:
                session.set_control(name, row)
            if name == VOICE:
                self.voice_by_user = True  # the user's voice_activity wins over the live detector
            self._emit_json({"type": "ack", "id": ident, "name": name, "frame": session.index,
                             "cleared": row is None, "wait_ms": round((time.perf_counter() - received) * 1000, 2)})

    def _run(self, request: StartRequest) -> None:
        """The session thread: prepare, open, stream; every failure becomes a message."""
        try:
            self._stream(request)
        except (_Closed, _TooSlow) as err:
            self.running = False
            if isinstance(err, _TooSlow):
                log.warning("session %d: client read nothing for %.0f s; disconnecting", self.sid, self.config.stall_seconds)
                self.loop.call_soon_threadsafe(self.server.drop, self, "too_slow",
                                               f"the client took no frame for {self.config.stall_seconds:g} s while "
                                               f"{self.config.queue_frames} waited; disconnected")
        except EartalkError as err:
            self.running = False
            with contextlib.suppress(_Closed, _TooSlow):
                self._emit_json({"type": "error", "code": "start_failed", "message": str(err), "fatal": False})
        except Exception as err:  # noqa: BLE001 - the server keeps serving the others
            log.exception("session %d failed", self.sid)
            self.running = False
            with contextlib.suppress(_Closed, _TooSlow):
                self._emit_json({"type": "error", "code": "internal", "message": f"{type(err).__name__}: {err}", "fatal": False})

    def _stream(self, request: StartRequest) -> None:
        served = self.server.model
        model = served.model
        t_start = time.perf_counter()
        reference, wave, frames = self._prepare(request)
        device = next(model.parameters()).device
        session = model.session(reference.to(device), **request.sampling)
        self.server.streams.add(session)
        speaking = None  # (T,) voice activity of a file, computed once
        if wave is not None:  # small per-frame signals of the other audio-driven controls, computed once
            from eartalk.core.types import Sample

            for name, plugin in model.stack.plugins.items():
                if "audio" in plugin.requires and name != served.audio_plugin:
                    signal = plugin.extract(Sample(audio=wave, num_frames=frames))
                    session.set_control(name, signal, start=0)
                    if name == VOICE:
                        speaking = signal[:, 0].numpy()
        self.voice_by_user = any(name == VOICE for name, _ in request.controls)
        for name, row in request.controls:
            if row is None:
                session.clear_control(name, start=0)
            else:
                session.set_control(name, row, start=0)
        listen = request.speech == "none"
        live_vad = model.stack.plugins[VOICE].live_detector() \
            if VOICE in model.stack.plugins and (request.speech == "microphone" or listen) else None
        feed = _AudioFeed(self, model.stack.plugins[served.audio_plugin], wave, request.speech == "microphone", listen) \
            if served.audio_plugin and (wave is not None or request.speech in ("microphone", "none")) else None
        self._emit_json({
            "type": "started", "frames": frames, "fps": VIDEO_FPS, "resolution": served.resolution,
            "speech": request.speech, "pace": request.pace, "prepare_ms": round((time.perf_counter() - t_start) * 1000, 2),
            "audio": {"sample_rate": AUDIO_SAMPLE_RATE, "samples_per_frame": SAMPLES_PER_FRAME,
                      "lookahead_frames": served.audio_lookahead},
        })
        reason, t0, was_speaking = "done", None, None
        silence = np.zeros(SAMPLES_PER_FRAME, np.int16).tobytes()
        while session.index < frames:
            if self.stop_requested.is_set():
                reason = "stopped"
                break
            signals = None
            audio = silence
            if feed is not None:
                got = feed.next()  # the audio condition's row of this frame, and the frame's samples
                if got is None:
                    reason = "stopped" if self.stop_requested.is_set() else "audio_ended"
                    break
                row, samples = got
                signals = {served.audio_plugin: row}
                audio = (samples * 32767).astype("<i2").tobytes()
                speaking_now = None
                if live_vad is not None:  # microphone / listening: voice activity from this frame's samples
                    speaking_now = live_vad.push(samples)
                    if not self.voice_by_user:
                        signals[VOICE] = torch.tensor([speaking_now])
                elif speaking is not None:  # a file: computed once above
                    speaking_now = float(speaking[min(session.index, speaking.shape[0] - 1)])
                if speaking_now is not None and not self.voice_by_user and (speaking_now >= 0.5) != was_speaking:
                    was_speaking = speaking_now >= 0.5
                    self._emit_json({"type": "voice", "frame": session.index, "speaking": was_speaking,
                                     "listening": not was_speaking})
            if request.pace == "realtime" and t0 is not None and request.speech != "microphone":
                due = t0 + session.index / VIDEO_FPS
                if time.perf_counter() - due > 2 / VIDEO_FPS:
                    t0 = time.perf_counter() - session.index / VIDEO_FPS  # behind: forget the debt, no burst
                while time.perf_counter() < due and not self.stop_requested.is_set():
                    time.sleep(min(0.01, max(0.0, due - time.perf_counter())))
            self._apply_controls(session)
            begun = time.perf_counter()
            if t0 is None:
                t0 = begun
            index = session.index
            out = session.step(signals)
            jpeg = encode_jpeg(to_uint8(out.pixels[0].float().cpu()), request.quality)
            gen_ms = (time.perf_counter() - begun) * 1000
            self._emit(("frame", index, gen_ms, begun, audio, jpeg))
            if session.index % 25 == 0:
                session.timeline.forget_before(session.index)
        self.running = False
        self._emit_json({"type": "end", "frames": session.index, "reason": reason})


class _AudioFeed:
    """Rows of the audio condition, frame by frame, through its :class:`AudioStream` (constant memory).

    A file (or bundled speech) is pushed ``lookahead`` frames ahead of the frame being made; the
    microphone is read from the session's chunk queue, so a frame waits for its lookahead audio.
    Each row comes with the 640 samples of its own frame (what the page plays with that frame).
    """

    def __init__(self, session: Session, plugin: Any, wave: torch.Tensor | None, mic: bool, silent: bool = False) -> None:
        self.session, self.stream, self.mic, self.silent = session, plugin.stream(), mic, silent
        self.wave = None if wave is None else wave.numpy().astype(np.float32)
        self.pushed = 0  # samples of the file pushed so far
        self.rows: deque[torch.Tensor] = deque()
        self.pcm = np.zeros(0, np.float32)  # samples not yet given out with a frame
        self.ended = False

    def _more(self) -> bool:
        """Push the next piece of audio into the stream; False once nothing more can come."""
        if self.ended:
            return False
        if self.silent:  # listening mode: digital silence for as long as the stream runs
            chunk = np.zeros(SAMPLES_PER_FRAME, np.float32)
        elif not self.mic:
            if self.pushed >= self.wave.shape[0]:
                self.rows.extend(self.stream.flush())
                self.ended = True
                return True
            chunk = self.wave[self.pushed:self.pushed + SAMPLES_PER_FRAME]
            self.pushed += chunk.shape[0]
        else:
            while True:
                try:
                    chunk = self.session.audio_in.get(timeout=0.1)
                    break
                except queue.Empty:
                    if self.session.closed.is_set() or self.session.stop_requested.is_set():
                        return False
            if chunk is None:
                self.rows.extend(self.stream.flush())
                self.ended = True
                return True
        self.pcm = np.concatenate([self.pcm, chunk])
        self.rows.extend(self.stream.push(torch.from_numpy(chunk)))
        return True

    def next(self) -> tuple[torch.Tensor, np.ndarray] | None:
        while not self.rows:
            if not self._more():
                return None
        samples = self.pcm[:SAMPLES_PER_FRAME]
        self.pcm = self.pcm[SAMPLES_PER_FRAME:]
        return self.rows.popleft(), np.pad(samples, (0, SAMPLES_PER_FRAME - samples.shape[0]))


# --------------------------------------------------------------------------------------------
# the server
# --------------------------------------------------------------------------------------------
class Server:
    """The aiohttp application and the sessions it holds.

    Attributes:
        sessions: open sessions by id.
        streams: weak references to every :class:`StreamingSession` opened (empty once all are
            freed; the memory tests watch it).
    """

    def __init__(self, model: ServedModel) -> None:
        self.model = model
        self.config = model.config
        self.sessions: dict[int, Session] = {}
        self.streams: weakref.WeakSet = weakref.WeakSet()
        self.ids = itertools.count(1)
        self.tmp_root = tempfile.mkdtemp(prefix="eartalk-serve-")
        atexit.register(shutil.rmtree, self.tmp_root, True)  # also when the loop never shuts down
        self.refused = 0
        self.opened = 0

    # -- aiohttp -----------------------------------------------------------------------------
    def app(self) -> Any:
        from aiohttp import web

        app = web.Application(middlewares=[self._middleware()], client_max_size=1 * _MB)
        app.router.add_get("/", self._index)
        app.router.add_get("/app.js", self._static("app.js", "application/javascript"))
        app.router.add_get("/style.css", self._static("style.css", "text/css"))
        app.router.add_get("/api/info", self._info)
        app.router.add_get("/api/face", self._face)
        app.router.add_get("/ws", self._ws)
        app.on_shutdown.append(self._shutdown)
        return app

    def _authorized(self, request: Any) -> bool:
        token = self.config.token
        if token is None:
            return True
        given = request.query.get("token") or ""
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            given = given or header[7:]
        return hmac.compare_digest(given.encode(), token.encode())

    def _middleware(self) -> Any:
        from aiohttp import web

        @web.middleware
        async def auth(request: Any, handler: Any) -> Any:
            if not self._authorized(request):
                return web.json_response(
                    {"type": "error", "code": "unauthorized",
                     "message": "this server needs its token: add ?token=TOKEN to the address (or an "
                                "'Authorization: Bearer TOKEN' header); TOKEN is the value given to --token"},
                    status=401,
                )
            return await handler(request)

        return auth

    async def _index(self, request: Any) -> Any:
        from aiohttp import web

        html = (STATIC / "index.html").read_text()
        if self.config.token is not None:
            from urllib.parse import quote

            suffix = "?token=" + quote(request.query.get("token", ""), safe="")
            html = html.replace('src="app.js"', f'src="app.js{suffix}"').replace('href="style.css"', f'href="style.css{suffix}"')
        return web.Response(text=html, content_type="text/html", headers={"Cache-Control": "no-store"})

    def _static(self, name: str, content_type: str) -> Any:
        from aiohttp import web

        async def handler(request: Any) -> Any:
            return web.Response(text=(STATIC / name).read_text(), content_type=content_type,
                                headers={"Cache-Control": "no-store"})

        return handler

    async def _info(self, request: Any) -> Any:
        from aiohttp import web

        info = self.model.info()
        info["sessions"] = {"open": len(self.sessions), "max": self.config.max_sessions}
        return web.json_response(info)

    async def _face(self, request: Any) -> Any:
        from aiohttp import web
        from PIL import Image

        try:
            seed = int(request.query.get("seed", "0"))
            if not 0 <= seed <= 9999:
                raise ValueError
        except ValueError:
            return web.json_response({"type": "error", "code": "bad_message", "message": "seed must be an integer in [0, 9999]"}, status=400)
        face = await asyncio.get_running_loop().run_in_executor(None, self.model.face, seed)
        buffer = io.BytesIO()
        Image.fromarray(face.permute(1, 2, 0).numpy()).save(buffer, "PNG")
        return web.Response(body=buffer.getvalue(), content_type="image/png")

    async def _ws(self, request: Any) -> Any:
        from aiohttp import WSMsgType, web

        limit = max(self.config.max_image_bytes, self.config.max_audio_bytes)
        ws = web.WebSocketResponse(max_msg_size=2 * limit + 1024, heartbeat=20.0)
        await ws.prepare(request)
        if len(self.sessions) >= self.config.max_sessions:
            self.refused += 1
            await ws.send_json({"type": "error", "code": "busy", "fatal": True,
                                "message": f"server full: {len(self.sessions)} of {self.config.max_sessions} sessions "
                                           "in use; try again later (the operator can raise --max-sessions)"})
            await ws.close(code=1013, message=b"server full")
            return ws
        loop = asyncio.get_running_loop()
        sid = next(self.ids)
        session = Session(self, sid, ws, loop)
        self.sessions[sid] = session
        self.opened += 1
        log.info("session %d opened (%d open)", sid, len(self.sessions))
        sender = asyncio.create_task(session.send_loop())
        try:
            await ws.send_json({"type": "hello", "session": sid, **self.model.info()})
            async for msg in ws:
                try:
                    if msg.type == WSMsgType.TEXT:
                        await session.handle_text(msg.data)
                    elif msg.type == WSMsgType.BINARY:
                        await session.handle_binary(msg.data)
                    elif msg.type == WSMsgType.ERROR:
                        break
                except ClientError as err:
                    reply = {"type": "error", "code": err.code, "message": str(err), "fatal": False}
                    if err.id is not None:
                        reply["id"] = err.id
                    await ws.send_json(reply)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            await session.close()
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
            self.sessions.pop(sid, None)
            log.info("session %d closed (%d open)", sid, len(self.sessions))
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await ws.close()
        return ws

    def drop(self, session: Session, code: str, message: str) -> None:
        """Disconnect a session from the event loop (after an error that ends it)."""

        async def go() -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(session.ws.send_json({"type": "error", "code": code, "message": message, "fatal": True}), 1.0)
            with contextlib.suppress(Exception):
                await session.ws.close(code=1008, message=code.encode())

        asyncio.ensure_future(go())

    async def _shutdown(self, app: Any) -> None:
        for session in list(self.sessions.values()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(session.ws.close(code=1001, message=b"server shutting down"), 2.0)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(session.close(), 5.0)
        shutil.rmtree(self.tmp_root, ignore_errors=True)
        self.model.close()


# --------------------------------------------------------------------------------------------
# running it
# --------------------------------------------------------------------------------------------
@attrs.define
class RunningServer:
    """A server started by :func:`start_in_thread` (tests, benchmarks)."""

    server: Server
    url: str
    port: int
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    runner: Any

    def close(self, timeout: float = 10.0) -> None:
        future = asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop)
        with contextlib.suppress(Exception):
            future.result(timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)


async def _start_site(server: Server) -> tuple[Any, int]:
    from aiohttp import web

    runner = web.AppRunner(server.app(), handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, server.config.host, server.config.port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # the real port when 0 was asked for
    return runner, port


def start_in_thread(model: Any, config: ServeConfig | None = None, warm_up: bool = True) -> RunningServer:
    """Start a server on its own event-loop thread; returns once it listens."""
    config = config or ServeConfig(port=0)
    if config.threads:
        torch.set_num_threads(config.threads)
    served = ServedModel(model, config)
    if warm_up:
        served.warm_up()
    server = Server(served)
    loop = asyncio.new_event_loop()
    started: concurrent.futures.Future = concurrent.futures.Future()

    def main() -> None:
        asyncio.set_event_loop(loop)
        try:
            started.set_result(loop.run_until_complete(_start_site(server)))
        except BaseException as err:  # noqa: BLE001
            started.set_exception(err)
            return
        loop.run_forever()
        loop.close()

    thread = threading.Thread(target=main, name="eartalk-serve", daemon=True)
    thread.start()
    runner, port = started.result(60)
    host = config.host if ":" not in config.host else f"[{config.host}]"
    return RunningServer(server, f"http://{host}:{port}", port, loop, thread, runner)


def serve_forever(model: Any, config: ServeConfig, ready: Any = print) -> None:
    """Run the server in this thread until interrupted (``eartalk serve``)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    served = ServedModel(model, config)
    served.warm_up()
    server = Server(served)

    async def main() -> None:
        runner, port = await _start_site(server)
        host = config.host if ":" not in config.host else f"[{config.host}]"
        token = f"/?token={config.token}" if config.token else "/"
        ready(f"eartalk serve: http://{host}:{port}{token}  (model {model.arch.name}, {served.resolution} px, "
              f"at most {config.max_sessions} sessions; Ctrl-C stops)")
        stop = asyncio.Event()
        with contextlib.suppress(NotImplementedError, RuntimeError):  # SIGTERM: shut down cleanly (uploads removed)
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
