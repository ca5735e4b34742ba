"""``eartalk generate --device --precision``: bf16-true weights generate a video through the streaming session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eartalk.core.cli import main


@pytest.mark.slow  # MediaPipe portrait crop + bf16 VAE on CPU: ~30-60 s
def test_generate_bf16_true(tmp_path: Path, real_dir: Path, landmarker_path: Path, capsys) -> None:
    from eartalk.core.engine.checkpoint import write_checkpoint
    from eartalk.core.engine.model import build_model
    from eartalk.core.engine.presets import get_arch
    from eartalk.core.media.io import read_video

    torch.manual_seed(0)
    model = build_model(get_arch("tiny"), ["voice_activity", "blink"])
    ckpt = write_checkpoint(tmp_path / "m.ckpt", model)
    portrait = sorted((real_dir / "image").iterdir())[0]
    out = tmp_path / "out.mp4"
    code = main(["generate", "--checkpoint", str(ckpt), "--portrait", str(portrait), "--frames", "6", "--out", str(out),
                 "--device", "auto", "--precision", "bf16-true", "--steps", "1", "--denoise", "2",
                 "--landmarker", str(landmarker_path)])
    assert code == 0, capsys.readouterr().err
    video = read_video(out)
    assert video.frames.shape[0] == 6 and video.frames.shape[-1] == 64
