"""``eartalk serve`` and ``eartalk bench serve``."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import re
import subprocess
import sys
import threading
import time
from collections import deque
from typing import Any

from eartalk.core.commands import Command, print_json
from eartalk.core.errors import ConfigError

_MB = 2**20


def is_loopback(host: str) -> bool:
    """True for addresses only this machine reaches (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, token: str | None) -> str | None:
    """The warning printed when the server is reachable from other machines (None on loopback)."""
    if is_loopback(host):
        return None
    text = (f"eartalk serve: warning: --host {host} makes the server reachable from other machines; anyone who "
            "can reach this port can start sessions and upload files. ")
    return text + ("Every request must carry the --token." if token else "Set --token to require a token.")


class ServeCommand(Command):
    name = "serve"
    help = "serve a live talking head to a browser: a page, a WebSocket protocol, controls mid-stream"
    bench_action = "serve"
    bench_help = "start `eartalk serve` and measure first frame, per-frame latency, control-to-frame and fps per session"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from eartalk.core.engine.presets import PRESETS

        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("--checkpoint", help="a `train` recipe checkpoint (.ckpt)")
        which.add_argument("--preset", choices=sorted(PRESETS), help="untrained weights of a preset (tries the plumbing)")
        parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
        parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0: any free port)")
        parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
        parser.add_argument("--max-sessions", type=int, default=4, help="concurrent sessions (default 4)")
        parser.add_argument("--token", help="require this token on every HTTP and WebSocket request (?token=...)")
        parser.add_argument("--max-image-mb", type=float, default=8.0, help="largest portrait upload in MiB (default 8)")
        parser.add_argument("--max-audio-mb", type=float, default=32.0, help="largest audio upload in MiB (default 32)")
        parser.add_argument("--max-frames", type=int, default=25 * 600, help="most frames per stream (default 15000 = 10 min)")
        parser.add_argument("--queue-frames", type=int, default=8, help="send queue per session, in frames (default 8)")
        parser.add_argument("--stall-seconds", type=float, default=10.0,
                            help="disconnect a client that reads nothing this long while its queue is full (default 10)")
        parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's; 1 suits several sessions)")
        parser.add_argument("--landmarker", help="MediaPipe face_landmarker.task for uploads (or $EARTALK_FACE_LANDMARKER)")
        parser.add_argument("--seed", type=int, default=0, help="seed of the untrained weights of --preset (default 0)")

    def config(self, args: argparse.Namespace) -> Any:
        from eartalk.recipes.serving.server import ServeConfig

        return ServeConfig(
            host=args.host, port=args.port, max_sessions=args.max_sessions, token=args.token,
            max_image_bytes=int(args.max_image_mb * _MB), max_audio_bytes=int(args.max_audio_mb * _MB),
            max_frames=args.max_frames, queue_frames=args.queue_frames, stall_seconds=args.stall_seconds,
            landmarker=args.landmarker, threads=args.threads,
        )

    def run(self, args: argparse.Namespace) -> int:
        from eartalk.recipes.serving.server import load_model, serve_forever

        config = self.config(args)
        warning = exposure_warning(config.host, config.token)
        if warning:
            print(warning, file=sys.stderr, flush=True)
        model = load_model(args.checkpoint, args.preset, args.device, args.seed)
        serve_forever(model, config, ready=lambda line: print(line, flush=True))
        return 0

    # -- eartalk bench serve --------------------------------------------------------------------
    def add_bench_arguments(self, parser: argparse.ArgumentParser) -> None:
        from eartalk.core.engine.presets import PRESETS

        parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="model preset (default tiny)")
        parser.add_argument("--checkpoint", help="serve a checkpoint instead of a preset's untrained weights")
        parser.add_argument("--sessions", type=int, default=1, help="concurrent sessions (default 1)")
        parser.add_argument("--frames", type=int, default=100, help="frames per session (default 100)")
        parser.add_argument("--pace", default="fast", choices=["fast", "realtime"],
                            help="fast: frames as fast as they are made (capacity); realtime: 25 fps (default fast)")
        parser.add_argument("--threads", type=int, default=1, help="server torch threads (default 1)")
        parser.add_argument("--device", default="cpu", help="server torch device (default cpu)")
        parser.add_argument("--churn", type=int, default=0,
                            help="afterwards, open and close this many sessions one by one and report server RSS")
        parser.add_argument("--url", help="measure a running server instead of starting one")
        parser.add_argument("--token", help="the running server's token (with --url)")
        parser.add_argument("--json", action="store_true", help="print JSON")

    def run_bench(self, args: argparse.Namespace) -> int:
        from eartalk.recipes.serving.client import bench_sessions, churn

        if args.sessions < 1 or args.frames < 4:
            raise ConfigError("bench serve: need --sessions >= 1 and --frames >= 4")
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        process, url = (None, args.url) if args.url else start_server_process(args)
        try:
            rss = (lambda: process_rss_mb(process.pid)) if process is not None else None
            rss_before = rss() if rss else None
            result = asyncio.run(bench_sessions(url, args.sessions, args.frames, args.token, args.pace))
            result.update({"preset": args.preset if not args.checkpoint else args.checkpoint, "server_threads": args.threads,
                           "cpu_count": os.cpu_count(), "load_average_before": load, "server_rss_mb": rss_before})
            if args.churn:
                result["churn"] = asyncio.run(churn(url, args.churn, args.token, rss))
                samples = result["churn"]["rss_mb"]
                if len(samples) > 1:
                    result["churn"]["rss_growth_mb"] = round(samples[-1][1] - samples[0][1], 1)
                    half = samples[len(samples) // 2][1]
                    result["churn"]["rss_growth_second_half_mb"] = round(samples[-1][1] - half, 1)
        finally:
            if process is not None:
                process.terminate()
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
        if args.json:
            print_json(result)
        else:
            for key, value in result.items():
                if key != "per_session":
                    print(f"{key}: {value}")
        return 0


def process_rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (Linux /proc; 0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def start_server_process(args: argparse.Namespace, timeout: float = 180.0) -> tuple[subprocess.Popen, str]:
    """``eartalk serve`` in a child process on a free loopback port; returns it and its URL."""
    which = ["--checkpoint", args.checkpoint] if args.checkpoint else ["--preset", args.preset]
    command = [sys.executable, "-m", "eartalk", "serve", *which, "--port", "0", "--device", args.device,
               "--threads", str(args.threads), "--max-sessions", str(max(4, args.sessions))]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(r"(http://\S+?:\d+)/", line)
        if match:  # keep reading its output, or its log lines would fill the pipe and block it
            threading.Thread(target=lambda: deque(process.stdout, maxlen=50), daemon=True).start()
            return process, match.group(1)
    process.kill()
    raise ConfigError("bench serve: the server did not start:\n" + "".join(lines[-20:]))
