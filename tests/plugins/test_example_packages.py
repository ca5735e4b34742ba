"""The documented third-party packages, pip-installed into a target folder like a user would:

* docs/examples/eartalk-sharpness, a metric registered through ``register_metrics``: listed by
  ``eartalk plugins`` and used by ``eartalk evaluate --metrics sharpness``;
* docs/examples/eartalk-head-scale, a face condition written from docs/plugins.md: passes the
  conformance kit and trains with a finite, non-zero tokenizer gradient (slow).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "docs" / "examples"


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)


def install(name: str, tmp_path: Path) -> dict[str, str]:
    """pip-install an example package (from a clean copy) into a target folder; the env to use it."""
    src = shutil.copytree(EXAMPLES / name, tmp_path / name, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    site = tmp_path / "site"
    done = run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                "--target", str(site), str(src)], cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    return {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow  # three subprocesses importing torch: ~20 s idle, ~100 s on a loaded 2-core box
def test_metric_package_is_listed_and_evaluate_uses_it_by_name(tmp_path: Path) -> None:
    env = install("eartalk-sharpness", tmp_path)
    listed = run([sys.executable, "-m", "eartalk", "plugins", "--json", "--kind", "metric"], cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["sharpness"]["distribution"] == "eartalk-sharpness"
    assert list(rows)[-1] == "sharpness", "third-party metrics are listed after the built-ins"

    # Two generated "sets": sharp checkerboards and the same frames blurred.
    make = (
        "import torch, torch.nn.functional as F, sys\n"
        "from eartalk.core.media.io import write_video\n"
        "t = torch.arange(64)\n"
        "board = (((t[:, None] // 8) + (t[None] // 8)) % 2).float() * 255\n"
        "frames = board.expand(10, 3, 64, 64).clone()\n"
        "blur = F.avg_pool2d(frames, 5, stride=1, padding=2)\n"
        "write_video(sys.argv[1], frames.round().to(torch.uint8))\n"
        "write_video(sys.argv[2], blur.round().to(torch.uint8))\n"
    )
    sharp, blurred = tmp_path / "sharp.mp4", tmp_path / "blurred.mp4"
    made = run([sys.executable, "-c", make, str(sharp), str(blurred)], cwd=tmp_path, env=env)
    assert made.returncode == 0, made.stderr
    report_path = tmp_path / "report.json"
    scored = run([sys.executable, "-m", "eartalk", "evaluate", "--generated", str(sharp), str(blurred),
                  "--metrics", "sharpness", "--out", str(report_path)], cwd=tmp_path, env=env)
    assert scored.returncode == 0, scored.stdout + scored.stderr
    report = json.loads(report_path.read_text())
    results = {name: res["sharpness"] for name, res in report["results"].items()}
    assert results["sharp"]["fidelity"] == "proxy" and results["sharp"]["higher_is_better"] is True
    assert results["sharp"]["value"] > 3 * results["blurred"]["value"] > 0, results


@pytest.mark.slow
def test_head_scale_package_passes_the_kit_and_trains(tmp_path: Path, landmarker_path: Path, real_dir: Path) -> None:
    env = {**install("eartalk-head-scale", tmp_path), "EARTALK_FACE_LANDMARKER": str(landmarker_path)}
    kit = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               str(tmp_path / "eartalk-head-scale" / "test_head_scale.py")], cwd=tmp_path, env=env)
    assert kit.returncode == 0 and "passed" in kit.stdout, kit.stdout[-3000:] + kit.stderr[-2000:]
    synth = tmp_path / "synth"
    made = run([sys.executable, "-m", "eartalk", "synth", "--out", str(synth), "--clips", "3", "--seconds", "1",
                "--resolution", "64"], cwd=tmp_path, env=env)
    assert made.returncode == 0, made.stderr
    train = (
        "import itertools, json, sys, torch\n"
        "from eartalk.conditions import ConditionSpec, ConditionStack\n"
        "from eartalk.conditions.presence import check_presence\n"
        "from eartalk.conditions.stack import build_plugins\n"
        "from eartalk.core.data.dataset import TalkingHeadDataModule\n"
        "from eartalk.core.engine.model import build_model\n"
        "from eartalk.core.engine.presets import get_arch\n"
        "torch.manual_seed(0)\n"
        "stack = ConditionStack(build_plugins([ConditionSpec('audio'), ConditionSpec('head_scale')], d_model=64))\n"
        "data = TalkingHeadDataModule(sys.argv[1], clip_frames=6, batch_size=2, stack=stack, val_fraction=0.0)\n"
        "presence = check_presence(data, sys.argv[1]).fraction('head_scale')\n"
        "model = build_model(get_arch('tiny', window=3, period=6), stack).train()\n"
        "tok = [p for n, p in model.stack.plugin('head_scale').named_parameters() if n != 'null_token']\n"
        "opt = torch.optim.Adam(model.parameters(), lr=1e-3)\n"
        "norms, finite, losses = [], [], []\n"
        "for batch, _ in zip(itertools.cycle(data.train_dataloader()), range(12)):\n"
        "    opt.zero_grad(); loss = model.loss(batch)['loss']; loss.backward()\n"
        "    g = [p.grad if p.grad is not None else torch.zeros_like(p) for p in tok]\n"
        "    norms.append(float(sum(x.pow(2).sum() for x in g).sqrt()))\n"
        "    finite.append(all(bool(torch.isfinite(x).all()) for x in g)); losses.append(float(loss.detach()))\n"
        "    opt.step()\n"
        "print(json.dumps({'presence': presence, 'norms': norms, 'finite': finite, 'losses': losses}))\n"
    )
    # Real clips prepared by `eartalk prepare` (face tracks stored; head_scale computed from them).
    real = tmp_path / "real"
    prepared = run([sys.executable, "-m", "eartalk", "prepare", str(real_dir / "video" / "LivePortrait__d11.mp4"),
                    "--out", str(real), "--resolution", "64", "--max-seconds", "2", "--conditions", "audio"],
                   cwd=tmp_path, env=env)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    for root in (synth, real):
        trained = run([sys.executable, "-c", train, str(root)], cwd=tmp_path, env=env)
        assert trained.returncode == 0, trained.stderr[-3000:]
        result = json.loads(trained.stdout.strip().splitlines()[-1])
        assert result["presence"] > 0.9, f"{root.name}: head_scale present on the training frames"
        assert all(result["finite"]) and sum(n > 0 for n in result["norms"][4:]) >= 6, (root.name, result["norms"])
        assert sum(result["losses"][-3:]) < sum(result["losses"][:3]), (root.name, result["losses"])
        assert json.loads((root / "presence.json").read_text())["conditions"]["head_scale"]["present"] > 0.9
