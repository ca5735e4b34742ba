"""Face pipeline: locating the model, tracking real clips, largest face, crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eartalk.core.errors import InputError, WeightsNotFoundError
from eartalk.core.media.face import (
    BLENDSHAPE_NAMES,
    ENV_VAR,
    crop_frames,
    crop_portrait,
    face_boxes,
    resolve_landmarker,
    track_in_crop,
)
from eartalk.core.media.io import read_image
from eartalk.core.types import FaceTrack

# Decoding and MediaPipe are the slow parts: every test of this module shares one pass over the
# first seconds of a few real clips (session-scoped fixtures).
#: Clips checked by the face tests and how many frames of each are decoded (3 s at 25 fps).
FACE_CLIPS = (
    "SadTalker__WDA_AlexandriaOcasioCortez_000.mp4",
    "SadTalker__WDA_KatieHill_000.mp4",
    "video-retalking__4.mp4",
    "LivePortrait__d12.mp4",
)
CLIP_FRAMES = 75


@pytest.fixture(scope="module")
def face_analyzer(landmarker_path):
    from eartalk.core.media.face import FaceAnalyzer

    with FaceAnalyzer(landmarker_path) as analyzer:
        yield analyzer


@pytest.fixture(scope="module")
def real_tracks(real_dir, face_analyzer):
    """name -> FaceTrack of the first ``CLIP_FRAMES`` frames (frames are not kept: memory)."""
    from eartalk.core.media.io import read_video

    tracks = {}
    for name in FACE_CLIPS:
        clip = read_video(real_dir / "video" / name, max_frames=CLIP_FRAMES, audio=False)
        tracks[name] = face_analyzer.track(clip.frames)
    return tracks


# -- model location -------------------------------------------------------------------------------
def test_resolve_landmarker_explicit_then_env(monkeypatch, landmarker_path, tmp_path):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_landmarker(landmarker_path) == landmarker_path
    monkeypatch.setenv(ENV_VAR, str(landmarker_path))
    assert resolve_landmarker() == landmarker_path
    with pytest.raises(WeightsNotFoundError, match=r"missing\.task.*face_landmarker\.task"):
        resolve_landmarker(tmp_path / "missing.task")


def test_resolve_landmarker_unconfigured_says_where_to_get_it(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_landmarker()
    message = str(info.value)
    assert "face_landmarker.task" in message and ENV_VAR in message and "mediapipe" in message.lower()


# -- tracking real clips ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", FACE_CLIPS)
def test_face_found_in_95_percent_of_frames(real_tracks, name):
    track = real_tracks[name]
    assert track.num_frames == CLIP_FRAMES
    assert float(track.present.float().mean()) >= 0.95
    assert track.landmarks.shape == (CLIP_FRAMES, 478, 3)
    assert track.blendshapes.shape == (CLIP_FRAMES, 52)
    assert track.matrices.shape == (CLIP_FRAMES, 4, 4)
    assert track.blendshape_names == list(BLENDSHAPE_NAMES)
    ok = track.present
    assert torch.isfinite(track.blendshapes[ok]).all()
    assert float(track.blendshapes[ok].min()) >= 0.0 and float(track.blendshapes[ok].max()) <= 1.0
    # Rigid transform: unit-norm rotation columns, face in front of the camera (negative z).
    rotation = track.matrices[ok, :3, :3]
    assert torch.allclose(rotation.norm(dim=1), torch.ones(int(ok.sum()), 3), atol=0.05)
    assert bool((track.matrices[ok, 2, 3] < 0).all())


def test_track_follows_a_moving_head(real_tracks):
    """d12 has big head motion: the face moves across the frame, its size stays consistent."""
    track = real_tracks["LivePortrait__d12.mp4"]
    xy = track.landmarks[:, :, :2]  # (T, 478, 2)
    center = xy.mean(dim=1)
    assert float(center[:, 0].max() - center[:, 0].min()) > 0.15
    width = xy[:, :, 0].amax(dim=1) - xy[:, :, 0].amin(dim=1)  # (T,)
    assert float(width.max() / width.min()) < 1.6
    assert 0.15 < float(width.mean()) < 0.8


# -- single images ---------------------------------------------------------------------------------
def test_gray_image_has_no_face(face_analyzer):
    gray = torch.full((3, 200, 200), 128, dtype=torch.uint8)
    with pytest.raises(InputError, match="no face found in gray.png"):
        face_analyzer.detect(gray, what="gray.png")


def test_several_faces_keep_the_largest_with_warning(real_dir, face_analyzer):
    import torch.nn.functional as F

    face = read_image(real_dir / "image" / "LivePortrait__s42.jpg")  # (3, 512, 512)
    small = F.interpolate(face[None].float(), size=(256, 256), mode="bilinear", antialias=True)[0].byte()
    canvas = torch.full((3, 512, 800), 255, dtype=torch.uint8)
    canvas[:, :, :512] = face
    canvas[:, 128:384, 530:786] = small
    with pytest.warns(UserWarning, match="2 faces"):
        track = face_analyzer.detect(canvas, what="two faces")
    assert track.num_frames == 1
    assert float(track.landmarks[0, :, 0].max()) < 512 / 800  # every landmark on the big face


def test_crop_portrait_centres_the_face(real_dir, face_analyzer):
    image = read_image(real_dir / "image" / "dreamtalk__male_face.png")  # 551x672, uncropped
    crop = crop_portrait(image, 96, face_analyzer)
    assert crop.shape == (3, 96, 96) and crop.dtype == torch.uint8
    again = face_analyzer.detect(crop, what="crop")
    center = again.landmarks[0, :, :2].mean(dim=0)
    assert torch.allclose(center, torch.tensor([0.5, 0.5]), atol=0.1)
    width = again.landmarks[0, :, 0].max() - again.landmarks[0, :, 0].min()
    assert 0.45 < float(width) < 0.8  # scale 1.6: the face spans about 1/1.6 of the crop


# -- boxes and crops on synthetic tracks -------------------------------------------------------------
def _square_track(centers: list[tuple[float, float]], half: float = 0.1) -> FaceTrack:
    """A track whose 478 landmarks fill a square of side 2*half around each centre."""
    count = len(centers)
    grid = torch.linspace(-half, half, 478)
    landmarks = torch.zeros(count, 478, 3)
    for t, (cx, cy) in enumerate(centers):
        landmarks[t, :, 0] = cx + grid
        landmarks[t, :, 1] = cy + grid.flip(0)
    present = torch.ones(count, dtype=torch.bool)
    return FaceTrack(landmarks, torch.zeros(count, 52), torch.eye(4).repeat(count, 1, 1), present)


def test_face_boxes_square_smoothed_inside_and_filled():
    rng = np.random.default_rng(0)
    centers = [(0.5 + float(rng.normal(0, 0.01)), 0.5) for _ in range(30)]
    centers[0] = (0.05, 0.5)  # near the left edge: the box is shifted inside the image
    track = _square_track(centers)
    track.present[10] = False
    track.landmarks[10] = float("nan")
    raw = face_boxes(track, 200, 300, smooth=0.0)
    smooth = face_boxes(track, 200, 300, smooth=0.8)
    for boxes in (raw, smooth):
        assert torch.isfinite(boxes).all()
        side_w, side_h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        assert torch.allclose(side_w, side_h, atol=1e-3)
        assert float(boxes[:, :2].min()) >= -1e-3 and float(boxes[:, 2].max()) <= 300 + 1e-3
        assert float(boxes[:, 3].max()) <= 200 + 1e-3
    assert torch.allclose(raw[0, 2] - raw[0, 0], torch.tensor(0.2 * 300 * 1.6), rtol=1e-3)
    assert float(raw[0, 0]) == pytest.approx(0.0, abs=1e-3)
    # The missing frame sits between its neighbours; smoothing reduces the jitter.
    assert float(raw[10, 0]) == pytest.approx(float((raw[9, 0] + raw[11, 0]) / 2), abs=1e-3)
    jitter = lambda b: float((b[12:, 0] - b[11:-1, 0]).abs().mean())  # noqa: E731
    assert jitter(smooth) < 0.5 * jitter(raw)


def test_crop_frames_takes_the_box_and_track_in_crop_maps_landmarks():
    frames = torch.zeros(2, 3, 100, 100, dtype=torch.uint8)
    frames[:, 0, 20:60, 30:70] = 255  # a red square, exactly the box below
    boxes = torch.tensor([[30.0, 20.0, 70.0, 60.0]] * 2)
    crops = crop_frames(frames, boxes, 16)
    assert crops.shape == (2, 3, 16, 16)
    assert int(crops[:, 0].min()) >= 250 and int(crops[:, 1:].max()) == 0
    track = _square_track([(0.5, 0.4)] * 2, half=0.2)  # landmarks span x 0.3-0.7, y 0.2-0.6
    local = track_in_crop(track, boxes, 100, 100)
    assert torch.allclose(local.landmarks[0, :, 0].min(), torch.tensor(0.0), atol=1e-5)
    assert torch.allclose(local.landmarks[0, :, 1].max(), torch.tensor(1.0), atol=1e-5)


def test_sigprof_ticks_survive_a_handler_save_and_restore(landmarker_path, real_dir) -> None:
    """MediaPipe's threads tick SIGPROF timers (ignored at C level). Saving and restoring every
    Python handler, as Lightning does around ``Trainer.fit``, must not reinstate the default
    action, which kills the process. Runs in a subprocess: the failure mode is process death."""
    import subprocess
    import sys

    code = f"""
import signal, time
from eartalk.core.media.face import FaceAnalyzer
from eartalk.core.media.io import read_image
image = read_image({str(real_dir / "image" / "LivePortrait__s42.jpg")!r})
with FaceAnalyzer({str(landmarker_path)!r}) as analyzer:
    analyzer.detect(image)
    saved = {{s: signal.getsignal(s) for s in (signal.SIGPROF, signal.SIGTERM)}}
    for s, handler in saved.items():
        signal.signal(s, handler)
    start = time.process_time()
    while time.process_time() - start < 1.0:
        analyzer.detect(image)
print(signal.getsignal(signal.SIGPROF) == signal.SIG_IGN)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"process died (rc {result.returncode}): {result.stderr[-500:]}"
    assert result.stdout.strip().endswith("True")
