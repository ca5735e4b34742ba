"""``eartalk serve`` over loopback, driven by the package's client: streams, controls and their acks,
concurrent sessions, every bad input, the session cap, the token, uploads and memory."""

from __future__ import annotations

import asyncio
import gc
import io
import ipaddress
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from eartalk.recipes.serving.client import ServeClient, ServeError
from eartalk.recipes.serving.server import ServeConfig, load_model, start_in_thread

REAL_IMAGE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real" / "image" / "LivePortrait__s42.jpg"


class NetworkBlocked(RuntimeError):
    pass


def allow_loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sockets may connect and bind to loopback addresses only (the suite blocks every socket)."""
    real_connect, real_bind = socket.socket.connect, socket.socket.bind

    def check(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]
            if host not in ("localhost", "") and not ipaddress.ip_address(host).is_loopback:
                raise NetworkBlocked(f"tests may only reach loopback addresses, not {host}")

    def connect(sock: socket.socket, address: Any) -> Any:
        check(sock, address)
        return real_connect(sock, address)

    def bind(sock: socket.socket, address: Any) -> Any:
        check(sock, address)
        return real_bind(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "bind", bind)


def run(coro: Any, timeout: float = 120.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def reference_jpegs(served: Any, frames: int, seconds: float, face_seed: int = 0, sampling: dict | None = None,
                    controls: dict[int, tuple[str, Any]] | None = None, quality: int = 85, microphone: bool = False) -> list[bytes]:
    """What the server must send for a bundled-face, bundled-speech stream, made here without it
    (``microphone``: the speech arrives live, so voice activity comes from the live detector)."""
    import torch

    from eartalk.core.types import SAMPLES_PER_FRAME, VIDEO_FPS, Sample, to_model_range, to_uint8
    from eartalk.recipes.serving.server import _AudioFeed, encode_jpeg, parse_control_value

    model = served.model
    wave = served.speech(face_seed)[: round(seconds * VIDEO_FPS) * SAMPLES_PER_FRAME]
    frames = min(frames, wave.shape[0] // SAMPLES_PER_FRAME)
    session = model.session(to_model_range(served.face(face_seed)), **(sampling or {}))
    for name, plugin in model.stack.plugins.items():
        if "audio" in plugin.requires and name != served.audio_plugin and not microphone:
            session.set_control(name, plugin.extract(Sample(audio=wave, num_frames=frames)), start=0)
    feed = _AudioFeed(None, model.stack.plugins[served.audio_plugin], wave, mic=False)
    vad = model.stack.plugins["voice_activity"].live_detector() if microphone else None
    out = []
    for t in range(frames):
        row, samples = feed.next()
        if controls and t in controls:
            name, value = controls[t]
            session.set_control(name, parse_control_value(model.stack.plugins[name], value))
        signals = {served.audio_plugin: row}
        if vad is not None:  # the microphone's voice activity comes from the live detector
            signals["voice_activity"] = torch.tensor([vad.push(samples)])
        frame = session.step(signals)
        out.append(encode_jpeg(to_uint8(frame.pixels[0]), quality))
    return out


@pytest.fixture(autouse=True)
def _block_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replaces the suite's guard: loopback is allowed, nothing else."""
    allow_loopback_only(monkeypatch)


@pytest.fixture(scope="module")
def model():
    """Untrained tiny weights, with the zero-initialised (adaLN-zero) parameters perturbed: at
    init the backbone ignores its condition slots, so no control would reach the pixels."""
    import torch

    model = load_model(preset="tiny")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if not param.any():
                param.add_(torch.randn(param.shape, generator=generator) * 0.3)
    return model


@pytest.fixture(scope="module")
def server(model):
    landmarker = os.environ.get("EARTALK_FACE_LANDMARKER")
    shared = Path(__file__).resolve().parents[2].parent / "shared" / "models" / "face_landmarker.task"
    config = ServeConfig(port=0, max_sessions=4, max_image_bytes=300_000, max_audio_bytes=400_000,
                         landmarker=landmarker or (str(shared) if shared.is_file() else None))
    running = start_in_thread(model, config)
    yield running
    running.close()


async def collect(client: ServeClient, on_frame: Any = None) -> list:
    frames = []
    async for frame in client.frames():
        frames.append(frame)
        if on_frame is not None:
            await on_frame(frame)
    return frames


def wait_until(predicate: Any, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# --------------------------------------------------------------------------------------------
# streams and controls
# --------------------------------------------------------------------------------------------
FAST = {"steps": 1, "denoise_steps": 1, "cfg": 1.0}  # cheaper frames; the plumbing is the same


def test_100_frames_with_yaw_changed_at_frame_50(server) -> None:
    """Frames arrive in order; the ack names the frame the change took effect at, and the frames are
    exactly those of a local session with the change set at that frame (and only from there on
    do they differ from a session without it)."""
    served = server.server.model

    async def go():
        async with ServeClient(server.url) as client:
            started = await client.start(portrait="bundled", speech="bundled", seconds=4.0, frames=100, pace="fast",
                                         sampling=FAST)
            ident = None

            async def on_frame(frame):
                nonlocal ident
                if frame.index == 49:
                    ident = await client.set_control("head_pose", {"yaw": 30.0})

            frames = await collect(client, on_frame)
            return started, frames, client.acks[ident], client.sent_at[ident]

    started, frames, ack, (_, next_expected) = run(go())
    assert started["frames"] == 100 and started["audio"]["lookahead_frames"] == served.audio_lookahead
    assert [f.index for f in frames] == list(range(100))
    assert next_expected == 50 and ack["name"] == "head_pose" and not ack["cleared"]
    assert 50 <= ack["frame"] <= 50 + server.server.config.queue_frames
    assert all(len(f.audio) == 640 * 2 for f in frames), "every frame carries its 40 ms of audio"
    from PIL import Image

    assert Image.open(io.BytesIO(frames[0].jpeg)).size == (64, 64)
    k = ack["frame"]
    with_change = reference_jpegs(served, 100, 4.0, sampling=FAST, controls={k: ("head_pose", {"yaw": 30.0})})
    assert [f.jpeg for f in frames] == with_change
    without = reference_jpegs(served, k + 8, 4.0, sampling=FAST)
    assert [f.jpeg for f in frames[:k]] == without[:k], "nothing changes before the acked frame"
    assert [f.jpeg for f in frames[k:k + 8]] != without[k:], "the change shows from the acked frame on"
    audio = np.frombuffer(b"".join(f.audio for f in frames), "<i2").astype(np.float32) / 32767
    wave = served.speech(0)[: 100 * 640].numpy()
    assert np.abs(audio - wave).max() < 2e-4, "frame t carries samples [640 t, 640 (t + 1))"


def test_three_concurrent_sessions_do_not_mix(server) -> None:
    served = server.server.model

    async def one(seed):
        async with ServeClient(server.url) as client:
            await client.start(portrait="bundled", speech="bundled", seconds=1.0, frames=12, pace="fast",
                               sampling={**FAST, "seed": seed})
            return [f.jpeg for f in await collect(client)]

    async def go():
        return await asyncio.gather(*(one(seed) for seed in (1, 2, 3)))

    results = run(go())
    for seed, jpegs in zip((1, 2, 3), results, strict=True):
        assert jpegs == reference_jpegs(served, 12, 1.0, sampling={**FAST, "seed": seed}), f"session with seed {seed}"
    assert results[0] != results[1]


def test_a_control_guided_on_its_own_scale_streams_as_the_session_would(server) -> None:
    served = server.server.model
    sampling = {**FAST, "cfg": 2.0, "cfg_separate": {"head_pose": 4.0}}

    async def go():
        async with ServeClient(server.url) as client:
            await client.start(portrait="bundled", speech="bundled", seconds=0.5, frames=6, pace="fast",
                               sampling=sampling, controls=[{"name": "head_pose", "value": {"yaw": 20.0}}])
            return [f.jpeg for f in await collect(client)]

    jpegs = run(go())
    assert jpegs == reference_jpegs(served, 6, 0.5, sampling=sampling, controls={0: ("head_pose", {"yaw": 20.0})})


def test_microphone_chunks_drive_the_same_rows_as_a_file(server) -> None:
    """Live audio in 10 ms chunks through AudioStream gives the frames a file gives."""
    served = server.server.model
    wave = served.speech(0)[: 12 * 640].numpy()

    async def go():
        async with ServeClient(server.url) as client:
            started = await client.start(portrait="bundled", speech="microphone", pace="fast", sampling=FAST)
            for a in range(0, wave.shape[0], 160):
                await client.send_audio_chunk(wave[a:a + 160])
            await client.send({"type": "audio_end"})
            frames = await collect(client)
            end = client.messages[-1]
            return started, frames, end

    started, frames, end = run(go())
    assert started["speech"] == "microphone" and end["reason"] == "audio_ended"
    assert [f.jpeg for f in frames] == reference_jpegs(served, 12, 12 / 25, sampling=FAST, microphone=True)
    audio = np.frombuffer(b"".join(f.audio for f in frames), "<i2").astype(np.float32) / 32767
    assert np.abs(audio - wave).max() < 2e-4


def test_listening_mode_streams_silence_with_voice_activity_off(server) -> None:
    """speech "none" is the listening mode: silent audio rows and voice_activity 0 on every frame
    (byte-equal to a session stepped that way here), a "voice" message saying so at frame 0."""
    import torch

    from eartalk.core.types import SAMPLES_PER_FRAME, to_model_range, to_uint8
    from eartalk.recipes.serving.server import _AudioFeed, encode_jpeg

    served = server.server.model

    async def go():
        async with ServeClient(server.url) as client:
            await client.start(portrait="bundled", speech="none", frames=8, pace="fast", sampling=FAST)
            return await collect(client), [m for m in client.messages if m.get("type") == "voice"]

    frames, voices = run(go())
    assert voices == [{"type": "voice", "frame": 0, "speaking": False, "listening": True}]
    assert all(f.audio == bytes(2 * SAMPLES_PER_FRAME) for f in frames)
    model = served.model
    session = model.session(to_model_range(served.face(0)), **FAST)
    feed = _AudioFeed(None, model.stack.plugins[served.audio_plugin], None, mic=False, silent=True)
    expected = []
    for _ in range(8):
        row, _ = feed.next()
        step = session.step({served.audio_plugin: row, "voice_activity": torch.zeros(1)})
        expected.append(encode_jpeg(to_uint8(step.pixels[0]), 85))
    assert [f.jpeg for f in frames] == expected


def test_microphone_voice_activity_follows_speech_and_pauses(server) -> None:
    """Live speech then silence: the live detector says speaking, then listening after the pause
    starts (after the detector's hangover of 4 frames); a voice_activity set by the client stops
    the detector."""
    served = server.server.model
    speech = served.speech(0).numpy()
    loud = np.argmax(np.abs(speech) > 0.05)  # the bundled speech's first syllable
    hiss = np.random.default_rng(0).normal(0, 1e-3, 20 * 640).astype(np.float32)  # a quiet room, -60 dBFS
    wave = np.concatenate([speech[loud:loud + 10 * 640], hiss])

    async def go(override: bool):
        async with ServeClient(server.url) as client:
            await client.start(portrait="bundled", speech="microphone", pace="fast", sampling=FAST,
                               controls=[{"name": "voice_activity", "value": 1.0}] if override else [])
            for a in range(0, wave.shape[0], 640):
                await client.send_audio_chunk(wave[a:a + 640])
            await client.send({"type": "audio_end"})
            await collect(client)
            return [m for m in client.messages if m.get("type") == "voice"]

    voices = run(go(False))
    assert voices[0]["frame"] == 0 and voices[0]["speaking"] is True
    quiet = [v for v in voices if v["listening"]]
    assert quiet and 10 < quiet[0]["frame"] <= 10 + 6, voices
    assert run(go(True)) == []  # the client's own voice_activity wins


def test_stop_ends_the_stream_and_the_socket_can_start_again(server) -> None:
    async def go():
        async with ServeClient(server.url) as client:
            await client.start(portrait="bundled", speech="none", pace="realtime")
            frames = []
            async for frame in client.frames():
                frames.append(frame)
                if frame.index == 2:
                    await client.stop()
            first_end = client.messages[-1]
            await client.start(portrait="bundled", speech="none", frames=3, pace="fast", sampling=FAST)
            again = await collect(client)
            return frames, first_end, again

    frames, end, again = run(go())
    assert end["reason"] == "stopped" and 3 <= len(frames) <= 3 + 8
    assert [f.index for f in again] == [0, 1, 2]


@pytest.mark.slow
def test_realtime_pace_is_25_fps(server) -> None:
    async def go():
        async with ServeClient(server.url) as client:
            await client.start(portrait="bundled", speech="none", frames=30, pace="realtime")
            return await collect(client)

    frames = run(go())
    span = frames[-1].received - frames[0].received
    assert span >= 29 / 25 * 0.95, f"30 frames in {span:.2f} s: faster than 25 fps"


# --------------------------------------------------------------------------------------------
# bad input: a clear message, the session (and the server) go on
# --------------------------------------------------------------------------------------------
def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def wav_bytes(samples: np.ndarray) -> bytes:
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, samples, 16000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


async def error_of(client: ServeClient, send: Any) -> dict:
    before = len(client.errors)
    await send()
    while len(client.errors) == before:
        msg = await client.recv(30)
        assert not (isinstance(msg, dict) and msg.get("type") in ("started",)), f"expected an error, got {msg}"
    return client.errors[-1]


def test_each_bad_input_gets_a_clear_message_and_the_session_goes_on(server) -> None:
    have_landmarker = server.server.config.landmarker is not None

    async def go():
        out = {}
        async with ServeClient(server.url) as c:
            out["json"] = await error_of(c, lambda: c.send_raw('{"type": "start", '))
            out["not_object"] = await error_of(c, lambda: c.send_raw("[1, 2]"))
            out["type"] = await error_of(c, lambda: c.send({"type": "dance"}))
            out["start_key"] = await error_of(c, lambda: c.send({"type": "start", "portrait": "bundled", "colour": 1}))
            out["separate"] = await error_of(c, lambda: c.send({"type": "start", "sampling": {"cfg_separate": {"hat": 2}}}))
            out["not_streaming"] = await error_of(c, lambda: c.send({"type": "control", "name": "head_pose", "value": {"yaw": 0}}))
            await c.upload_portrait(b"this is not an image")
            out["image"] = await error_of(c, lambda: c.send({"type": "start", "portrait": "upload", "speech": "none"}))
            if have_landmarker:
                await c.upload_portrait(png_bytes(np.full((96, 96, 3), 128, np.uint8)))
                out["face"] = await error_of(c, lambda: c.send({"type": "start", "portrait": "upload", "speech": "none"}))
            await c.upload_audio(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 10)
            out["corrupt"] = await error_of(c, lambda: c.send({"type": "start", "speech": "upload"}))
            await c.upload_audio(wav_bytes(np.zeros(16000, np.float32)))
            out["silent"] = await error_of(c, lambda: c.send({"type": "start", "speech": "upload"}))
            out["too_large"] = await error_of(c, lambda: c.send_raw(bytes([1]) + b"\x00" * 300_001))
            out["binary_kind"] = await error_of(c, lambda: c.send_raw(b"\x09abc"))
            await c.start(portrait="bundled", speech="none", frames=40, pace="realtime", sampling=FAST)
            out["unknown"] = await error_of(c, lambda: c.send({"type": "control", "name": "hat", "value": 1, "id": "a"}))
            out["range"] = await error_of(c, lambda: c.send({"type": "control", "name": "head_pose", "value": {"yaw": 500}}))
            out["columns"] = await error_of(c, lambda: c.send({"type": "control", "name": "blink", "value": {"lid": 1}}))
            out["path"] = await error_of(c, lambda: c.send({"type": "control", "name": "head_pose", "value": "/etc/passwd.csv"}))
            out["nan"] = await error_of(c, lambda: c.send({"type": "control", "name": "blink", "value": [float("nan"), 0]}))
            out["label"] = await error_of(c, lambda: c.send({"type": "control", "name": "emotion", "value": "grumpy"}))
            ident = await c.set_control("emotion", "happy")  # still streaming, still answering
            frames = await collect(c)
            return out, frames, c.acks.get(ident)

    out, frames, ack = run(go())
    expect = {
        "json": ("bad_json", "malformed JSON"), "not_object": ("bad_message", "JSON object"),
        "type": ("bad_message", "unknown message type 'dance'"), "start_key": ("bad_message", "unknown keys ['colour']"),
        "separate": ("bad_message", "cfg_separate names ['hat'], not controls of this model"),
        "not_streaming": ("not_streaming", "send start first"),
        "image": ("start_failed", "not an image"), "face": ("start_failed", "no face found"),
        "corrupt": ("start_failed", "cannot read"), "silent": ("start_failed", "silent"),
        "too_large": ("too_large", "at most 0.3 MiB"), "binary_kind": ("bad_message", "0x09"),
        "unknown": ("unknown_control", "unknown control 'hat'"), "range": ("out_of_range", "yaw=500 is out of range [-90, 90]"),
        "columns": ("bad_value", "unknown columns ['lid']"), "path": ("bad_value", "files cannot be named"),
        "nan": ("bad_value", "finite"), "label": ("bad_value", "grumpy"),
    }
    for key, error in out.items():
        code, text = expect[key]
        assert error["code"] == code and text in error["message"], (key, error)
        assert error["fatal"] is False
    assert out["unknown"]["id"] == "a", "an error about a control names the control message's id"
    assert len(frames) == 40 and ack is not None and ack["name"] == "emotion"
    assert wait_until(lambda: not any(p.name.startswith("session-") for p in Path(server.server.tmp_root).iterdir())), \
        "uploads are removed with the session"


def test_a_client_vanishing_mid_frame_frees_its_session(server) -> None:
    srv = server.server

    async def go():
        client = ServeClient(server.url)
        await client.connect()
        await client.upload_portrait(b"not read, only stored")
        folder = [p for p in Path(srv.tmp_root).iterdir() if p.name.startswith("session-")]
        await client.start(portrait="bundled", speech="none", frames=2000, pace="fast", sampling=FAST)
        for _ in range(3):
            while not hasattr(await client.recv(), "jpeg"):
                pass
        await client.abort()  # no closing handshake, mid-stream
        return folder

    folders = run(go())
    assert len(folders) == 1 and oct(folders[0].stat().st_mode & 0o777) == "0o700", "a private upload folder"
    assert wait_until(lambda: not srv.sessions), f"sessions still open: {list(srv.sessions)}"
    assert not folders[0].exists(), "the uploads go with the session"
    gc.collect()
    assert wait_until(lambda: (gc.collect() or True) and len(srv.streams) == 0), "the StreamingSession was freed"

    async def other():
        async with ServeClient(server.url) as client:
            await client.start(portrait="bundled", speech="none", frames=3, pace="fast", sampling=FAST)
            return await collect(client)

    assert len(run(other())) == 3, "the server keeps serving"


def test_the_session_cap_refuses_clearly_and_frees_on_close(server) -> None:
    cap = server.server.config.max_sessions

    async def go():
        clients = [ServeClient(server.url) for _ in range(cap)]
        for c in clients:
            await c.connect()
        with pytest.raises(ServeError) as refused:
            await ServeClient(server.url).connect()
        await clients[0].close()
        await asyncio.sleep(0.3)
        async with ServeClient(server.url) as late:
            hello = late.hello
        for c in clients[1:]:
            await c.close()
        return refused.value, hello

    refused, hello = run(go())
    assert refused.code == "busy" and f"{cap} of {cap} sessions in use" in refused.message
    assert hello["type"] == "hello"


def test_many_sessions_opened_and_closed_leave_nothing_behind(server) -> None:
    srv = server.server

    async def go():
        for _ in range(10):
            async with ServeClient(server.url) as c:
                await c.start(portrait="bundled", speech="bundled", seconds=1.0, frames=2, pace="fast", sampling=FAST)
                await collect(c)

    run(go())
    assert wait_until(lambda: not srv.sessions)
    assert wait_until(lambda: (gc.collect() or True) and len(srv.streams) == 0), f"{len(srv.streams)} sessions alive"
    assert not any(p.name.startswith("session-") for p in Path(srv.tmp_root).iterdir())


def test_a_full_queue_backpressures_then_drops_a_client_that_reads_nothing(server) -> None:
    """The policy, at the queue: the session thread waits while the queue is full, and a client
    that takes nothing for stall_seconds is disconnected as too slow."""
    from eartalk.recipes.serving.server import Session, _TooSlow

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        session = Session.__new__(Session)  # only the queue side of a session
        session.loop = loop
        session.config = ServeConfig(port=0, queue_frames=2, stall_seconds=0.5)
        session.closed = threading.Event()
        session.out = asyncio.run_coroutine_threadsafe(_queue(2), loop).result()
        session._emit(("json", {}))
        session._emit(("json", {}))  # the queue is full now
        t0 = time.perf_counter()
        with pytest.raises(_TooSlow):
            session._emit(("json", {}))
        assert time.perf_counter() - t0 >= 0.45, "it waited (backpressure) before giving up"
        assert session.out.qsize() == 2, "nothing was dropped or added"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


async def _queue(size: int) -> asyncio.Queue:
    return asyncio.Queue(maxsize=size)


# --------------------------------------------------------------------------------------------
# security
# --------------------------------------------------------------------------------------------
def test_token_is_required_on_every_http_and_websocket_request(model) -> None:
    running = start_in_thread(model, ServeConfig(port=0, token="s3cret"), warm_up=False)
    try:
        async def go():
            import aiohttp

            out = {}
            async with aiohttp.ClientSession() as http:
                for path in ("/", "/app.js", "/api/info", "/api/face?seed=1", "/ws"):
                    async with http.get(running.url + path) as r:
                        out[path] = (r.status, await r.text())
                async with http.get(running.url + "/api/info", params={"token": "wrong"}) as r:
                    out["wrong"] = r.status
                async with http.get(running.url + "/api/info", headers={"Authorization": "Bearer s3cret"}) as r:
                    out["header"] = r.status
                async with http.get(running.url + "/", params={"token": "s3cret"}) as r:
                    out["page"] = (r.status, await r.text())
            with pytest.raises(ServeError) as no_token:
                await ServeClient(running.url).connect()
            async with ServeClient(running.url, token="s3cret") as ok:
                hello = ok.hello
            return out, no_token.value, hello

        out, refused, hello = run(go())
    finally:
        running.close()
    for path in ("/", "/app.js", "/api/info", "/api/face?seed=1", "/ws"):
        status, body = out[path]
        assert status == 401 and "token" in body, path
    assert out["wrong"] == 401 and out["header"] == 200
    status, page = out["page"]
    assert status == 200 and 'src="app.js?token=s3cret"' in page
    assert refused.code == "unauthorized" and hello["type"] == "hello"


def test_default_host_is_loopback_and_other_hosts_warn() -> None:
    from eartalk.recipes.serving.commands import exposure_warning

    assert ServeConfig().host == "127.0.0.1"
    assert exposure_warning("127.0.0.1", None) is None and exposure_warning("::1", None) is None
    warning = exposure_warning("0.0.0.0", None)
    assert "warning" in warning and "other machines" in warning and "--token" in warning


def test_the_page_and_info_are_served(server) -> None:
    async def go():
        import aiohttp

        async with aiohttp.ClientSession() as http:
            async with http.get(server.url + "/") as r:
                page = await r.text()
            async with http.get(server.url + "/app.js") as r:
                script = (r.status, r.headers["Content-Type"])
            async with http.get(server.url + "/api/face", params={"seed": "x/../../etc"}) as r:
                bad_seed = r.status
        status, info = await ServeClient(server.url).get_json("/api/info")
        return page, script, bad_seed, info

    page, script, bad_seed, info = run(go())
    assert "<canvas" in page and 'src="app.js"' in page
    assert script == (200, "application/javascript; charset=utf-8") and bad_seed == 400
    controls = {c["name"]: c for c in info["controls"]}
    assert [s["column"] for s in controls["head_pose"]["sliders"]] == ["yaw", "pitch", "roll"]
    assert "happy" in controls["emotion"]["labels"] and controls["emotion"]["steps"][0]["values"] == [1, 2, 3]
    assert {s["column"] for s in controls["blink"]["sliders"]} == {"left", "right"}
    assert info["audio"]["lookahead_frames"] == 2 and info["limits"]["max_image_bytes"] == 300_000


@pytest.mark.skipif(not REAL_IMAGE.is_file(), reason=f"real fixture {REAL_IMAGE} not found")
def test_an_uploaded_photo_streams(server) -> None:
    if server.server.config.landmarker is None:
        pytest.skip("no face landmarker model")
    from PIL import Image

    image = np.asarray(Image.open(REAL_IMAGE).convert("RGB").resize((256, 256)))

    async def go():
        async with ServeClient(server.url) as c:
            await c.upload_portrait(png_bytes(image))
            await c.start(portrait="upload", speech="none", frames=3, pace="fast", sampling=FAST)
            return await collect(c)

    assert len(run(go())) == 3


@pytest.mark.slow
def test_server_memory_stays_flat_over_500_sessions(server) -> None:
    """500 sessions opened, streamed (2 frames) and closed: resident memory after the first 100
    (allocator and caches warm) and after all 500 differ by less than 25 MiB."""
    from eartalk.core.engine.bench import rss_mb
    from eartalk.recipes.serving.client import churn

    result = run(churn(server.url, 500, rss=rss_mb, every=100), timeout=1500)
    samples = dict(result["rss_mb"])
    assert wait_until(lambda: not server.server.sessions)
    growth = samples[500] - samples[100]
    print(f"server RSS (MiB) by sessions opened: {samples}; growth 100 -> 500: {growth:.1f} MiB")
    assert growth < 25, samples


@pytest.mark.slow
def test_bench_serve_cli_prints_the_figures() -> None:
    """`eartalk bench serve` starts `eartalk serve` in a child process and measures it with the client."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "eartalk", "bench", "serve", "--preset", "tiny", "--sessions", "2",
                          "--frames", "12", "--json"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    for key in ("first_frame_ms", "latency_ms_p50", "latency_ms_p95", "control_to_frame_frames", "fps"):
        assert isinstance(result[key], (int, float)) and result[key] >= 0, key
    assert result["sessions"] == 2 and [s["frames"] for s in result["per_session"]] == [12, 12]
    assert result["latency_ms_p95"] >= result["latency_ms_p50"] > 0
    assert result["control_to_frame_frames_max"] <= 8  # at most the send queue


def test_live_audio_outside_a_microphone_stream_is_refused(server) -> None:
    async def go():
        async with ServeClient(server.url) as c:
            return await error_of(c, lambda: c.send_audio_chunk(np.zeros(160, np.float32)))

    error = run(go())
    assert error["code"] == "not_streaming" and "microphone" in error["message"]
