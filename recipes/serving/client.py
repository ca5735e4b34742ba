"""A Python client of ``eartalk serve`` (asyncio, aiohttp), and the ``eartalk bench serve`` driver.

Example::

    import asyncio
    from eartalk.recipes.serving.client import ServeClient

    async def main():
        async with ServeClient("http://127.0.0.1:8000") as client:
            await client.start(portrait="bundled", speech="bundled", seconds=4)
            async for frame in client.frames():
                if frame.index == 50:
                    await client.set_control("head_pose", {"yaw": 30})
            print(client.acks)

    asyncio.run(main())
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from eartalk.core.errors import EartalkError
from eartalk.recipes.serving import wire


class ServeError(EartalkError):
    """The server answered with an error message (or closed the socket).

    Attributes:
        code: the error code (docs/serving.md), e.g. ``busy``, ``unauthorized``, ``bad_value``.
        message: the server's message.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ServeClient:
    """One session (one WebSocket) with an ``eartalk serve`` server.

    Args:
        url: the server's address, ``http://host:port``.
        token: the server's token, when it has one (sent as ``?token=`` on every request).

    Attributes:
        hello: the server's first message (model, controls, limits).
        acks: ``{id: ack message}`` of control changes.
        errors: error messages received (non-fatal ones do not end the session).
        messages: every other JSON message, in order.
        frames_received: frames received in the current stream.
    """

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.http: Any = None
        self.ws: Any = None
        self.hello: dict[str, Any] = {}
        self.acks: dict[Any, dict[str, Any]] = {}
        self.errors: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []
        self.frames_received = 0
        self.sent_at: dict[Any, tuple[float, int]] = {}  # control id -> (clock, frames received when sent)
        self._ids = 0
        self.closed_code: int | None = None

    # -- connection ------------------------------------------------------------------------------
    def _params(self) -> dict[str, str]:
        return {"token": self.token} if self.token else {}

    async def connect(self) -> dict[str, Any]:
        """Open the socket and read ``hello`` (raises ServeError ``busy``/``unauthorized``)."""
        import aiohttp

        self.http = aiohttp.ClientSession()
        try:
            self.ws = await self.http.ws_connect(self.url + "/ws", params=self._params(), max_msg_size=0, heartbeat=None)
        except aiohttp.WSServerHandshakeError as err:
            await self.http.close()
            if err.status == 401:
                raise ServeError("unauthorized", "the server needs its token (--token)") from None
            raise ServeError("handshake", f"HTTP {err.status}: {err.message}") from None
        first = await self.recv()
        if first.get("type") == "error":
            await self.close()
            raise ServeError(first.get("code", "error"), first.get("message", ""))
        self.hello = first
        return first

    async def close(self) -> None:
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()
        if self.http is not None:
            await self.http.close()

    async def abort(self) -> None:
        """Vanish without a closing handshake (what a crashed client does)."""
        if self.ws is not None:
            transport = getattr(getattr(self.ws, "_conn", None), "transport", None)
            if transport is not None:
                transport.abort()
        if self.http is not None:
            await self.http.close()

    async def __aenter__(self) -> ServeClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def get_json(self, path: str) -> tuple[int, dict[str, Any]]:
        """``GET path`` on the server: ``(status, JSON body)``."""
        import aiohttp

        async with aiohttp.ClientSession() as http, http.get(self.url + path, params=self._params()) as response:
            return response.status, await response.json(content_type=None)

    # -- messages --------------------------------------------------------------------------------
    async def recv(self, timeout: float = 60.0) -> Any:
        """The next message: a dict (JSON) or a :class:`~eartalk.recipes.serving.wire.Frame`."""
        import aiohttp

        msg = await self.ws.receive(timeout=timeout)
        if msg.type == aiohttp.WSMsgType.TEXT:
            data = json.loads(msg.data)
            kind = data.get("type")
            if kind == "ack":
                self.acks[data["id"]] = data
            elif kind == "error":
                self.errors.append(data)
            else:
                self.messages.append(data)
            return data
        if msg.type == aiohttp.WSMsgType.BINARY:
            frame = wire.unpack_frame(msg.data, time.perf_counter())
            self.frames_received = frame.index + 1
            return frame
        self.closed_code = self.ws.close_code
        raise ServeError("closed", f"the server closed the socket (code {self.ws.close_code}, {msg.extra or msg.type.name})")

    async def send(self, message: Mapping[str, Any]) -> None:
        await self.ws.send_str(json.dumps(dict(message)))

    async def send_raw(self, text: str | bytes) -> None:
        """Send a raw text or binary message (tests of bad input)."""
        if isinstance(text, bytes):
            await self.ws.send_bytes(text)
        else:
            await self.ws.send_str(text)

    async def upload_portrait(self, data: bytes) -> dict[str, Any]:
        await self.ws.send_bytes(bytes([wire.UPLOAD_PORTRAIT]) + data)
        return await self.wait_for("uploaded")

    async def upload_audio(self, data: bytes) -> dict[str, Any]:
        await self.ws.send_bytes(bytes([wire.UPLOAD_AUDIO]) + data)
        return await self.wait_for("uploaded")

    async def send_audio_chunk(self, samples: Any) -> None:
        """Live audio: 16 kHz mono float samples (any chunk size)."""
        import numpy as np

        await self.ws.send_bytes(bytes([wire.AUDIO_CHUNK]) + np.asarray(samples, dtype="<f4").tobytes())

    async def wait_for(self, kind: str, timeout: float = 60.0) -> dict[str, Any]:
        """Read messages until one of type ``kind`` (frames in between are dropped); an error raises."""
        deadline = time.perf_counter() + timeout
        while True:
            msg = await self.recv(max(0.01, deadline - time.perf_counter()))
            if isinstance(msg, dict):
                if msg.get("type") == kind:
                    return msg
                if msg.get("type") == "error":
                    raise ServeError(msg.get("code", "error"), msg.get("message", ""))

    async def start(self, wait: bool = True, **options: Any) -> dict[str, Any]:
        """Send ``start`` (options as in docs/serving.md); with ``wait``, return the ``started`` message."""
        self.frames_received = 0
        await self.send({"type": "start", **options})
        return await self.wait_for("started") if wait else {}

    async def set_control(self, name: str, value: Any) -> Any:
        """Change a control; returns the id its ack will carry."""
        self._ids += 1
        ident = self._ids
        self.sent_at[ident] = (time.perf_counter(), self.frames_received)
        await self.send({"type": "control", "name": name, "value": value, "id": ident})
        return ident

    async def clear_control(self, name: str) -> Any:
        self._ids += 1
        ident = self._ids
        self.sent_at[ident] = (time.perf_counter(), self.frames_received)
        await self.send({"type": "clear", "name": name, "id": ident})
        return ident

    async def stop(self) -> None:
        await self.send({"type": "stop"})

    async def frames(self, timeout: float = 60.0) -> AsyncIterator[wire.Frame]:
        """Frames of the current stream until its ``end`` message (an error message raises)."""
        while True:
            msg = await self.recv(timeout)
            if isinstance(msg, wire.Frame):
                yield msg
            elif msg.get("type") == "end":
                return
            elif msg.get("type") == "error" and msg.get("fatal", True):
                raise ServeError(msg.get("code", "error"), msg.get("message", ""))


# --------------------------------------------------------------------------------------------
# benchmark driver
# --------------------------------------------------------------------------------------------
def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def measure_session(url: str, frames: int, token: str | None = None, control_at: int | None = None,
                          pace: str = "fast", seed: int = 0) -> dict[str, Any]:
    """Stream ``frames`` frames (bundled face and speech 0, sampling seed ``seed``) and measure one session.

    Returns:
        ``first_frame_ms`` (start sent -> frame 0 received), ``latency_ms_p50``/``p95`` (frame
        age: generation start -> handed to the socket), ``gen_ms_p50``, ``control_to_frame_frames``
        (ack frame minus the next frame expected when the change was sent), ``fps`` (frames 1..F-1
        over their arrival span) and ``frames``.
    """
    control_at = frames // 2 if control_at is None else control_at
    async with ServeClient(url, token) as client:
        seconds = min(frames / 25 + 0.2, float(client.hello["limits"]["bundled_speech_seconds"]))
        t0 = time.perf_counter()
        await client.send({"type": "start", "portrait": "bundled", "speech": "bundled", "face_seed": 0,
                           "seconds": seconds, "frames": frames, "pace": pace, "sampling": {"seed": seed}})
        arrivals, ages, gens, ident, first = [], [], [], None, None
        async for frame in client.frames():
            if first is None:
                first = frame.received - t0
            arrivals.append(frame.received)
            ages.append(frame.age_ms)
            gens.append(frame.gen_ms)
            if frame.index == control_at - 1:
                ident = await client.set_control("head_pose", {"yaw": 30.0})
        ack = client.acks.get(ident)
        c2f = None if ack is None else ack["frame"] - client.sent_at[ident][1]
    span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else float("nan")
    return {
        "frames": len(arrivals),
        "first_frame_ms": round(first * 1000, 1) if first is not None else None,
        "latency_ms_p50": round(statistics.median(ages), 2),
        "latency_ms_p95": round(_percentile(ages, 0.95), 2),
        "gen_ms_p50": round(statistics.median(gens), 2),
        "control_to_frame_frames": c2f,
        "fps": round((len(arrivals) - 1) / span, 2) if len(arrivals) > 1 else None,
    }


async def bench_sessions(url: str, sessions: int, frames: int, token: str | None = None, pace: str = "fast") -> dict[str, Any]:
    """``sessions`` concurrent sessions; means of :func:`measure_session` plus each session's figures."""
    results = await asyncio.gather(*(measure_session(url, frames, token, pace=pace, seed=i) for i in range(sessions)))
    out: dict[str, Any] = {"sessions": sessions, "frames": frames, "pace": pace}
    for key in ("first_frame_ms", "latency_ms_p50", "latency_ms_p95", "gen_ms_p50", "control_to_frame_frames", "fps"):
        values = [r[key] for r in results if r[key] is not None]
        out[key] = round(statistics.mean(values), 2) if values else None
    out["fps_min"] = min(r["fps"] for r in results)
    out["control_to_frame_frames_max"] = max(r["control_to_frame_frames"] for r in results)
    out["per_session"] = results
    return out


async def churn(url: str, count: int, token: str | None = None, rss: Any = None, every: int = 50) -> dict[str, Any]:
    """Open ``count`` sessions one after another (start, 2 frames, close); sample ``rss()`` along the way."""
    samples = []
    for i in range(count):
        async with ServeClient(url, token) as client:
            await client.start(portrait="bundled", speech="bundled", seconds=1.0, frames=2, pace="fast")
            async for _ in client.frames():
                pass
        if rss is not None and (i % every == every - 1 or i == 0):
            await asyncio.sleep(0.05)  # let the server finish closing the session
            samples.append((i + 1, rss()))
    return {"sessions": count, "rss_mb": samples}
