"""Fixtures of the metric tests: real clips' face tracks, computed once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

#: Clips of the default (fast) lip-sync test; the slow test uses all eight.
DEFAULT_CLIPS = ("SadTalker__WDA_AlexandriaOcasioCortez_000", "SadTalker__WDA_KatieHill_000", "video-retalking__3")


class TrackCache:
    """Lazily decoded clips: ``get(stem) -> (audio (S,), FaceTrack, first frames (T0, 3, H, W))``."""

    def __init__(self, video_dir: Path, landmarker: Path) -> None:
        self.video_dir = video_dir
        self.landmarker = landmarker
        self._items: dict[str, tuple] = {}
        self._analyzer = None

    def stems(self) -> list[str]:
        return sorted(p.stem for p in self.video_dir.glob("*.mp4"))

    def get(self, stem: str) -> tuple:
        if stem not in self._items:
            from eartalk.core.media.face import FaceAnalyzer
            from eartalk.core.media.io import read_video

            clip = read_video(self.video_dir / f"{stem}.mp4", fps=25)
            if self._analyzer is None:
                self._analyzer = FaceAnalyzer(self.landmarker, num_faces=1)
            track = self._analyzer.track(clip.frames, fps=25.0)
            # keep only a few frames: the control test needs pixels, the lip-sync test only tracks
            self._items[stem] = (clip.audio, track, clip.frames[:40].clone())
        return self._items[stem]

    def close(self) -> None:
        if self._analyzer is not None:
            self._analyzer.close()


@pytest.fixture(scope="session")
def real_tracks(real_dir: Path, landmarker_path: Path):
    cache = TrackCache(real_dir / "video", landmarker_path)
    yield cache
    cache.close()


@pytest.fixture(scope="session")
def default_clips() -> tuple[str, ...]:
    """Stems of the clips used by the default (fast) real-clip tests."""
    return DEFAULT_CLIPS


@pytest.fixture()
def seeded():
    torch.manual_seed(0)
