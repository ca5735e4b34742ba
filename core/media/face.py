"""Face pipeline on MediaPipe's FaceLandmarker (Tasks API, ``face_landmarker.task`` bundle).

Per frame it gives 478 landmarks (468 mesh points + 10 iris points), 52 blendshape scores and the
facial transformation matrix (canonical face -> camera), as a :class:`~eartalk.core.types.FaceTrack`.
The model file is never downloaded: pass its path, or set ``$EARTALK_FACE_LANDMARKER``.

Face crops are squares around the landmark bounding box, scaled by ``scale``, smoothed over time
(zero-phase exponential smoothing) and kept inside the image.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from eartalk.core.errors import InputError, WeightsNotFoundError
from eartalk.core.types import VIDEO_FPS, FaceTrack, Sample

log = logging.getLogger(__name__)

ENV_VAR = "EARTALK_FACE_LANDMARKER"
MODEL_URL = "https://ai.google.dev/edge/mediapipe/solutions/vision/face_landmarker#models"
NUM_LANDMARKS = 478
NUM_BLENDSHAPES = 52


def resolve_landmarker(path: str | Path | None = None) -> Path:
    """Locate ``face_landmarker.task``: the explicit ``path``, else ``$EARTALK_FACE_LANDMARKER``.

    Raises:
        WeightsNotFoundError: neither is set, or the file named does not exist; the message says
            where to download the model.
    """
    how = (
        f"Download face_landmarker.task from MediaPipe's model page ({MODEL_URL}) and pass its path "
        f"or set {ENV_VAR}=/path/to/face_landmarker.task"
    )
    if path is not None:
        candidate, origin = Path(path).expanduser(), "the given path"
    elif os.environ.get(ENV_VAR):
        candidate, origin = Path(os.environ[ENV_VAR]).expanduser(), f"${ENV_VAR}"
    else:
        raise WeightsNotFoundError(f"the MediaPipe face landmarker model is needed but not configured. {how}.")
    if not candidate.is_file():
        raise WeightsNotFoundError(f"face landmarker model {candidate} ({origin}) does not exist. {how}.")
    return candidate


#: Set (to anything but "" or "0") to let MediaPipe/TFLite/absl write their native log lines to
#: stderr; ``eartalk -v`` sets it.
VERBOSE_ENV = "EARTALK_VERBOSE"


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Silence what C++ libraries write to file descriptor 2 (MediaPipe, TFLite, absl/glog) for
    the duration of the block.

    MediaPipe logs "Logging before InitGoogle()", "Sets FaceBlendshapesGraph acceleration to
    xnnpack", "Created TensorFlow Lite XNNPACK delegate" and "Feedback manager requires a model
    with a single signature inference" from C++ when a landmarker is created and first run; no
    environment variable turns them off, so the descriptor is pointed at /dev/null while MediaPipe
    calls run. Python's own ``sys.stderr`` is flushed first and works again afterwards. Nothing is
    hidden when ``$EARTALK_VERBOSE`` is set.
    """
    if os.environ.get(VERBOSE_ENV, "") not in ("", "0"):
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real descriptor 2 (embedded interpreters)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _rgb_uint8(image: torch.Tensor, what: str) -> np.ndarray:
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"{what}: expected a (3, H, W) uint8 tensor, got {getattr(image, 'shape', type(image))}")
    if image.dtype != torch.uint8:
        raise ValueError(f"{what}: expected uint8 pixels, got {image.dtype}")
    return np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy())  # (H, W, 3)


def _ignore_sigprof() -> None:
    """Record SIGPROF as ignored in Python's signal table before MediaPipe starts its threads.

    MediaPipe's worker threads arm per-thread CPU timers that deliver SIGPROF and set the signal
    to "ignore" at the C level only. Python's table still says "default", and code that saves and
    restores every handler (Lightning's signal connector does, around ``Trainer.fit``) then puts
    back "default": the next timer tick kills the process ("Profiling timer expired"). Ignoring it
    through Python keeps both views equal. Only the main thread may set handlers.
    """
    import signal
    import threading

    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGPROF) == signal.SIG_DFL:
        signal.signal(signal.SIGPROF, signal.SIG_IGN)


class FaceAnalyzer:
    """MediaPipe FaceLandmarker with blendshapes and transformation matrices.

    Use as a context manager (or call :meth:`close`) to release MediaPipe's graph::

        with FaceAnalyzer("face_landmarker.task") as analyzer:
            track = analyzer.track(frames)  # frames (T, 3, H, W) uint8

    Args:
        model_path: ``face_landmarker.task`` (default: ``$EARTALK_FACE_LANDMARKER``).
        num_faces: faces MediaPipe looks for per frame; the largest one is kept.
        min_detection_confidence: face detector threshold (also used for presence and tracking).
    """

    def __init__(self, model_path: str | Path | None = None, *, num_faces: int = 4,
                 min_detection_confidence: float = 0.5) -> None:
        self.model_path = resolve_landmarker(model_path)
        self.num_faces = int(num_faces)
        self.min_detection_confidence = float(min_detection_confidence)
        self._model_bytes = self.model_path.read_bytes()
        self._image_landmarker: Any = None

    # -- MediaPipe objects -------------------------------------------------------------------
    def _create(self, video: bool) -> Any:
        from mediapipe.tasks.python import BaseOptions, vision

        _ignore_sigprof()
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_buffer=self._model_bytes),
            running_mode=vision.RunningMode.VIDEO if video else vision.RunningMode.IMAGE,
            num_faces=self.num_faces,
            min_face_detection_confidence=self.min_detection_confidence,
            min_face_presence_confidence=self.min_detection_confidence,
            min_tracking_confidence=self.min_detection_confidence,
            output_face_blendshapes=True,
            output_facial_transformation_matrixes=True,
        )
        with quiet_native_stderr():
            return vision.FaceLandmarker.create_from_options(options)

    def close(self) -> None:
        """Release the MediaPipe graph (the analyzer can still be used; it is rebuilt on demand)."""
        if self._image_landmarker is not None:
            self._image_landmarker.close()
            self._image_landmarker = None

    def __enter__(self) -> FaceAnalyzer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- analysis ------------------------------------------------------------------------------
    def track(self, frames: torch.Tensor, fps: float = float(VIDEO_FPS)) -> FaceTrack:
        """Track the largest face through a video (MediaPipe video mode, fresh tracking state).

        Args:
            frames: ``(T, 3, H, W)`` uint8 RGB.
            fps: frame rate (timestamps for MediaPipe's tracker).

        Returns:
            A :class:`FaceTrack` of ``T`` frames; ``present`` is False (rows NaN) where no face was found.
        """
        import mediapipe as mp

        if frames.dim() != 4 or frames.shape[1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(f"track expects (T, 3, H, W) uint8 frames, got {tuple(frames.shape)} {frames.dtype}")
        results, several = [], 0
        landmarker = self._create(video=True)
        try:
            for t in range(frames.shape[0]):
                image = mp.Image(image_format=mp.ImageFormat.SRGB, data=_rgb_uint8(frames[t], "frame"))
                with quiet_native_stderr():
                    result = landmarker.detect_for_video(image, int(round(t * 1000.0 / fps)))
                several += len(result.face_landmarks) > 1
                results.append(result)
        finally:
            landmarker.close()
        if several:
            warnings.warn(
                f"several faces found in {several} of {frames.shape[0]} frames; keeping the largest face",
                stacklevel=2,
            )
        return _to_track(results)

    def detect(self, image: torch.Tensor, what: str = "the image") -> FaceTrack:
        """Find the largest face in one image (MediaPipe image mode).

        Args:
            image: ``(3, H, W)`` uint8 RGB.
            what: how error messages name the image (e.g. its file name).

        Returns:
            A :class:`FaceTrack` with one frame.

        Raises:
            InputError: no face is found.
        """
        import mediapipe as mp

        if self._image_landmarker is None:
            self._image_landmarker = self._create(video=False)
        with quiet_native_stderr():
            result = self._image_landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=_rgb_uint8(image, what)))
        if not result.face_landmarks:
            raise InputError(f"no face found in {what}; give a portrait with one clearly visible face")
        if len(result.face_landmarks) > 1:
            warnings.warn(f"{len(result.face_landmarks)} faces found in {what}; using the largest", stacklevel=2)
        return _to_track([result])


def _largest(result: Any) -> int:
    areas = []
    for face in result.face_landmarks:
        xs = [p.x for p in face]
        ys = [p.y for p in face]
        areas.append((max(xs) - min(xs)) * (max(ys) - min(ys)))
    return int(np.argmax(areas))


def _to_track(results: list[Any]) -> FaceTrack:
    count = len(results)
    landmarks = np.full((count, NUM_LANDMARKS, 3), np.nan, np.float32)
    blendshapes = np.full((count, NUM_BLENDSHAPES), np.nan, np.float32)
    matrices = np.full((count, 4, 4), np.nan, np.float32)
    present = np.zeros(count, bool)
    names: list[str] = []
    for t, result in enumerate(results):
        if not result.face_landmarks:
            continue
        i = _largest(result)
        points = result.face_landmarks[i]
        landmarks[t, : len(points)] = [(p.x, p.y, p.z) for p in points]
        if result.face_blendshapes:
            cats = result.face_blendshapes[i]
            blendshapes[t, : len(cats)] = [c.score for c in cats]
            if not names:
                names = [c.category_name for c in cats]
        if result.facial_transformation_matrixes:
            matrices[t] = np.asarray(result.facial_transformation_matrixes[i], np.float32).reshape(4, 4)
        present[t] = True
    return FaceTrack(
        landmarks=torch.from_numpy(landmarks),
        blendshapes=torch.from_numpy(blendshapes),
        matrices=torch.from_numpy(matrices),
        present=torch.from_numpy(present),
        blendshape_names=names or default_blendshape_names(),
    )


def default_blendshape_names() -> list[str]:
    """MediaPipe's 52 blendshape category names in model output order."""
    return list(BLENDSHAPE_NAMES)


BLENDSHAPE_NAMES = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft",
    "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft",
    "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft",
    "jawOpen", "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft",
    "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft",
    "mouthPressRight", "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower",
    "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthUpperUpLeft", "mouthUpperUpRight", "noseSneerLeft", "noseSneerRight",
)


# --------------------------------------------------------------------------------------------
# crops
# --------------------------------------------------------------------------------------------
def _smooth(values: np.ndarray, alpha: float) -> np.ndarray:
    """Zero-phase exponential smoothing along axis 0 (forward then backward pass)."""
    if alpha <= 0 or values.shape[0] < 2:
        return values
    out = values.copy()
    for t in range(1, len(out)):
        out[t] = alpha * out[t - 1] + (1 - alpha) * out[t]
    for t in range(len(out) - 2, -1, -1):
        out[t] = alpha * out[t + 1] + (1 - alpha) * out[t]
    return out


def face_boxes(track: FaceTrack, height: int, width: int, scale: float = 1.6, smooth: float = 0.8) -> torch.Tensor:
    """Square crop boxes around the face, smoothed over time and kept inside the image.

    Args:
        track: face track of the frames (landmarks normalised to the ``height x width`` frames).
        height, width: frame size in pixels.
        scale: box side relative to the larger side of the landmark bounding box.
        smooth: exponential smoothing factor in [0, 1) (0 = none), applied forward and backward.

    Returns:
        ``(T, 4)`` float boxes ``x0, y0, x1, y1`` in pixels (squares of side at most
        ``min(height, width)``). Frames without a face take the boxes of their neighbours.

    Raises:
        InputError: no frame has a face.
    """
    present = track.present.numpy().astype(bool)
    if not present.any():
        raise InputError("no face found in any frame, so there is nothing to crop")
    if not 0.0 <= smooth < 1.0:
        raise ValueError(f"smooth must be in [0, 1), got {smooth}")
    points = track.landmarks[..., :2].numpy().astype(np.float64)  # (T, 478, 2)
    lo = np.zeros((len(points), 2))
    hi = np.zeros((len(points), 2))
    lo[present] = points[present].min(axis=1)
    hi[present] = points[present].max(axis=1)
    size_px = np.array([width, height], np.float64)
    center = (lo + hi) / 2 * size_px  # (T, 2) pixels
    side = np.max((hi - lo) * size_px, axis=1) * scale  # (T,)
    state = np.concatenate([center, side[:, None]], axis=1)  # (T, 3)
    # Frames without a face: linear interpolation between neighbours, constant at the ends.
    idx = np.nonzero(present)[0]
    for k in range(3):
        state[:, k] = np.interp(np.arange(len(state)), idx, state[idx, k])
    state = _smooth(state, smooth)
    side = np.minimum(state[:, 2], min(height, width))
    cx = np.clip(state[:, 0], side / 2, width - side / 2)
    cy = np.clip(state[:, 1], side / 2, height - side / 2)
    boxes = np.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], axis=1)
    return torch.from_numpy(boxes.astype(np.float32))


def crop_frames(frames: torch.Tensor, boxes: torch.Tensor, resolution: int) -> torch.Tensor:
    """Crop ``boxes`` out of ``frames`` and resize them to ``resolution`` (antialiased bilinear).

    Args:
        frames: ``(T, 3, H, W)`` uint8.
        boxes: ``(T, 4)`` pixel boxes ``x0, y0, x1, y1`` (from :func:`face_boxes`).
        resolution: output side R.

    Returns:
        ``(T, 3, R, R)`` uint8.
    """
    if frames.shape[0] != boxes.shape[0]:
        raise ValueError(f"{frames.shape[0]} frames but {boxes.shape[0]} boxes")
    height, width = frames.shape[2], frames.shape[3]
    out = torch.empty(frames.shape[0], 3, resolution, resolution, dtype=torch.uint8)
    for t in range(frames.shape[0]):
        x0, y0, x1, y1 = boxes[t].tolist()
        x0, y0 = max(0, int(round(x0))), max(0, int(round(y0)))
        x1, y1 = min(width, max(x0 + 1, int(round(x1)))), min(height, max(y0 + 1, int(round(y1))))
        patch = frames[t, :, y0:y1, x0:x1].float()[None]  # (1, 3, h, w)
        resized = F.interpolate(patch, size=(resolution, resolution), mode="bilinear",
                                align_corners=False, antialias=True)
        out[t] = resized[0].round().clamp(0, 255).to(torch.uint8)
    return out


def track_in_crop(track: FaceTrack, boxes: torch.Tensor, height: int, width: int) -> FaceTrack:
    """The same track with landmarks normalised to the crop boxes instead of the full frame.

    x and y become ``(pixel - box origin) / box side``; z (MediaPipe's depth, in units of the
    frame width) is rescaled by ``width / box side``. Blendshapes and matrices are unchanged.
    """
    side = (boxes[:, 2] - boxes[:, 0]).clamp(min=1.0)  # (T,)
    lm = track.landmarks.clone()  # (T, 478, 3)
    lm[..., 0] = (lm[..., 0] * width - boxes[:, None, 0]) / side[:, None]
    lm[..., 1] = (lm[..., 1] * height - boxes[:, None, 1]) / side[:, None]
    lm[..., 2] = lm[..., 2] * width / side[:, None]
    return FaceTrack(lm, track.blendshapes.clone(), track.matrices.clone(), track.present.clone(),
                     list(track.blendshape_names))


def crop_portrait(image: torch.Tensor, resolution: int, analyzer: FaceAnalyzer | None = None,
                  *, what: str = "the portrait") -> torch.Tensor:
    """Square face crop of a portrait, resized to ``resolution``: ``(3, R, R)`` uint8.

    Args:
        image: ``(3, H, W)`` uint8 RGB.
        resolution: output side R.
        analyzer: a :class:`FaceAnalyzer` to reuse (default: a new one from ``$EARTALK_FACE_LANDMARKER``).
        what: how error messages name the image (e.g. its file name).

    Raises:
        InputError: no face in the image.
    """
    if analyzer is None:
        with FaceAnalyzer() as own:
            track = own.detect(image, what=what)
    else:
        track = analyzer.detect(image, what=what)
    boxes = face_boxes(track, int(image.shape[1]), int(image.shape[2]), smooth=0.0)
    return crop_frames(image[None], boxes, resolution)[0]


def ensure_face(sample: Sample, model_path: str | Path | None = None) -> FaceTrack | None:
    """The sample's face track, computing it from ``sample.frames`` when missing.

    The computed track is stored in ``sample.face`` so that several face plugins reading the same
    sample run MediaPipe once. Returns None when the sample has neither a track nor frames.
    """
    if sample.face is not None:
        return sample.face
    if sample.frames is None:
        return None
    with FaceAnalyzer(model_path) as analyzer:
        sample.face = analyzer.track(sample.frames)
    return sample.face
