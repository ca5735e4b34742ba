"""Media I/O: video and audio in, H.264 mp4 out, and whole clips as :class:`Sample`.

Conventions (see :mod:`eartalk.core.types`): video is 25 fps RGB ``uint8`` ``(T, 3, H, W)``;
audio is 16 kHz mono ``float32`` ``(S,)`` in [-1, 1], and video frame ``t`` covers audio samples
``[t * 640, (t + 1) * 640)``.

* :func:`read_video` resamples any container's video to a constant frame rate using the frame
  timestamps (so variable-frame-rate phone videos come out evenly spaced) and returns the audio
  track aligned with frame 0.
* :func:`read_audio` reads any container PyAV/FFmpeg can decode (wav, mp3, m4a, mp4, flac...),
  downmixes to mono and resamples with :func:`torchaudio.functional.resample`.
* :func:`write_video` writes an H.264 (libx264, else libopenh264, else FFmpeg's default ``h264``
  encoder) mp4 with an AAC audio track muxed in sync. When the installed FFmpeg has no H.264
  encoder at all it falls back to MPEG-4 part 2 with a warning naming the codec used.
* :func:`load_sample` reads a clip, tracks the face and optionally crops it to a square of side R.

Every failure a user can cause (missing, corrupt, empty or silent file) raises
:class:`~eartalk.core.errors.InputError` naming the file.
"""

from __future__ import annotations

import logging
import math
import warnings
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np
import torch

from eartalk.core.errors import InputError
from eartalk.core.types import AUDIO_SAMPLE_RATE, SAMPLES_PER_FRAME, VIDEO_FPS, Sample

if TYPE_CHECKING:
    from eartalk.core.media.face import FaceAnalyzer

log = logging.getLogger(__name__)

#: Peak amplitude below which audio counts as silent (-80 dBFS).
SILENCE_PEAK = 1e-4

#: Video encoders tried in order by :func:`write_video` (the first one FFmpeg has wins).
H264_ENCODERS = ("libx264", "libopenh264", "h264")
FALLBACK_ENCODER = "mpeg4"


@attrs.define
class VideoClip:
    """A decoded video resampled to a constant frame rate.

    Attributes:
        frames: ``(T, 3, H, W)`` uint8 RGB frames.
        fps: frame rate of ``frames``.
        audio: ``(S,)`` float32 mono audio at 16 kHz starting at frame 0, or None when the file
            has no audio track. When ``fps`` is 25 it has exactly ``T * 640`` samples (zero-padded
            or trimmed at the end).
        source: the file the clip was read from.
    """

    frames: torch.Tensor
    fps: float
    audio: torch.Tensor | None
    source: str

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


# --------------------------------------------------------------------------------------------
# opening files
# --------------------------------------------------------------------------------------------
def _check_file(path: str | Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{what} {path} does not exist")
    if not path.is_file():
        raise InputError(f"{what} {path} is not a file")
    if path.stat().st_size == 0:
        raise InputError(f"{what} {path} is empty (0 bytes)")
    return path


def _open(path: Path, what: str) -> Any:
    import av

    try:
        return av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as err:
        raise InputError(f"cannot read {what} {path}: not a media file FFmpeg can decode ({err})") from None


# --------------------------------------------------------------------------------------------
# audio
# --------------------------------------------------------------------------------------------
def _decode_audio(path: Path, what: str, max_seconds: float | None = None) -> tuple[np.ndarray, int, float] | None:
    """Decode the first audio stream: ``(samples (S, C) float32, rate, start time in s)`` or None."""
    import av

    container = _open(path, what)
    try:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        chunks: list[np.ndarray] = []
        rate = stream.rate or (stream.codec_context.sample_rate if stream.codec_context else 0)
        start: float | None = None
        total = 0
        try:
            for frame in container.decode(stream):
                rate = frame.sample_rate
                if start is None and frame.pts is not None and frame.time_base is not None:
                    start = float(frame.pts * frame.time_base)
                data = frame.to_ndarray()  # planar (C, n) or packed (1, n * C)
                channels = len(frame.layout.channels)
                if frame.format.is_planar:
                    data = data.T  # (n, C)
                else:
                    data = data.reshape(-1, channels)
                data = _to_float(data)
                chunks.append(data)
                total += data.shape[0]
                if max_seconds is not None and rate and total >= (max_seconds + 0.1) * rate:
                    break
        except av.error.FFmpegError as err:
            if not chunks:
                raise InputError(f"cannot decode the audio of {what} {path}: {err}") from None
            log.warning("audio of %s is truncated after %.2f s (%s)", path, total / max(rate, 1), err)
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)  # excludes the encoder's tail padding
    finally:
        container.close()
    if not chunks:
        return np.zeros((0, 1), np.float32), int(rate or AUDIO_SAMPLE_RATE), 0.0
    samples = np.concatenate(chunks, axis=0)
    if duration is not None and duration > 0:
        # Drop the encoder's tail padding (a fraction of a codec frame), but never trust a
        # container duration that is far off (some files only carry an estimate).
        keep = max(1, int(round(duration * rate)))
        if 0 < samples.shape[0] - keep <= 0.2 * rate:
            samples = samples[:keep]
    return samples, int(rate), start or 0.0


def _to_float(data: np.ndarray) -> np.ndarray:
    if data.dtype.kind == "f":
        return data.astype(np.float32, copy=False)
    if data.dtype.kind == "i":
        return (data.astype(np.float32) / float(np.iinfo(data.dtype).max + 1)).astype(np.float32)
    if data.dtype == np.uint8:  # unsigned 8-bit PCM is offset by 128
        return ((data.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    return data.astype(np.float32)


def _mono_resampled(samples: np.ndarray, rate: int, sample_rate: int) -> torch.Tensor:
    """Downmix ``(S, C)`` to mono and resample to ``sample_rate``: ``(S',)`` float32."""
    import torchaudio.functional as AF

    mono = torch.from_numpy(np.ascontiguousarray(samples.mean(axis=1), dtype=np.float32))  # (S,)
    if rate != sample_rate and mono.numel() > 0:
        mono = AF.resample(mono, orig_freq=int(rate), new_freq=int(sample_rate))
    return mono.clamp(-1.0, 1.0).contiguous()  # resampling can overshoot full scale slightly


def read_audio(path: str | Path, sample_rate: int = AUDIO_SAMPLE_RATE, allow_silent: bool = False) -> torch.Tensor:
    """Read an audio file (or the audio track of a video) as mono float32 at ``sample_rate``.

    Args:
        path: any file FFmpeg decodes: wav, mp3, m4a, flac, ogg, mp4, mov...
        sample_rate: output rate in Hz (16 kHz everywhere in eartalk).
        allow_silent: accept an all-silent file (peak below -80 dBFS) instead of raising.

    Returns:
        ``(S,)`` float32 samples in [-1, 1].

    Raises:
        InputError: the file is missing, not decodable, has no audio track, has no samples, or is
            silent (unless ``allow_silent``).
    """
    path = _check_file(path, "audio file")
    decoded = _decode_audio(path, "audio file")
    if decoded is None:
        raise InputError(f"audio file {path} has no audio track")
    samples, rate, _ = decoded
    if samples.shape[0] == 0:
        raise InputError(f"audio file {path} is empty: it has an audio track but no samples")
    audio = _mono_resampled(samples, rate, sample_rate)
    if not allow_silent and float(audio.abs().max()) < SILENCE_PEAK:
        raise InputError(
            f"audio file {path} is silent (peak below -80 dBFS); give a file with speech, "
            "or drive the model without audio"
        )
    return audio


# --------------------------------------------------------------------------------------------
# video
# --------------------------------------------------------------------------------------------
def read_video(
    path: str | Path, fps: float = VIDEO_FPS, max_frames: int | None = None, *, audio: bool = True
) -> VideoClip:
    """Read a video as RGB frames at a constant ``fps`` (and its audio at 16 kHz mono).

    Output frame ``k`` shows the source frame on screen at time ``k / fps`` (the last frame whose
    timestamp is at or before it), so variable frame rates and frame-rate changes keep A/V sync.
    Time 0 is the earliest start of the video and audio streams.

    Args:
        path: a video file (mp4, mov, mkv, webm, avi...).
        fps: output frame rate.
        max_frames: stop after this many output frames (decoding stops early too).
        audio: also decode the audio track (``VideoClip.audio`` is None when False or absent).

    Raises:
        InputError: missing file, not decodable, no video stream, or no decodable frame.
    """
    import av

    path = _check_file(path, "video file")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    container = _open(path, "video file")
    try:
        if not container.streams.video:
            raise InputError(f"{path} has no video stream (is it an audio file? use read_audio)")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        audio_start = None
        if container.streams.audio and container.streams.audio[0].start_time is not None:
            a = container.streams.audio[0]
            audio_start = float(a.start_time * a.time_base)
        source_frames: list[np.ndarray] = []
        times: list[float] = []
        origin: float | None = None
        limit = None if max_frames is None else max_frames / fps
        reached_limit = False
        try:
            for frame in container.decode(stream):
                t = frame.time
                if t is None:  # no timestamp: assume the nominal rate
                    rate = float(stream.average_rate or fps)
                    t = (times[-1] + 1.0 / rate) if times else 0.0
                if origin is None:
                    origin = t if audio_start is None else min(t, audio_start)
                if times and t <= times[-1]:  # out-of-order or duplicate timestamp: keep order
                    t = times[-1] + 1e-6
                if limit is not None and times and t - origin >= limit:
                    reached_limit = True  # the video goes on past the last output frame
                    break
                source_frames.append(frame.to_ndarray(format="rgb24"))  # (H, W, 3)
                times.append(t)
        except av.error.FFmpegError as err:
            if not source_frames:
                raise InputError(f"cannot decode video file {path}: {err}") from None
            log.warning("video %s is truncated after %d frames (%s)", path, len(source_frames), err)
        nominal = float(stream.average_rate) if stream.average_rate else fps
    finally:
        container.close()
    if not source_frames:
        raise InputError(f"video file {path} has no frames")
    assert origin is not None
    rel = np.asarray(times) - origin  # (N,) seconds from time 0
    end = rel[-1] + (float(np.median(np.diff(rel))) if len(rel) > 1 else 1.0 / nominal)
    count = max(1, int(math.floor(end * fps + 1e-6)))
    if max_frames is not None:
        count = max_frames if reached_limit else min(count, max_frames)
    grid = np.arange(count) / fps  # (T,) output frame times
    index = np.clip(np.searchsorted(rel, grid + 1e-6, side="right") - 1, 0, len(rel) - 1)
    frames = torch.from_numpy(np.stack([source_frames[i] for i in index])).permute(0, 3, 1, 2).contiguous()

    track = None
    if audio:
        decoded = _decode_audio(path, "video file", max_seconds=count / fps)
        if decoded is not None and decoded[0].shape[0] > 0:
            samples, rate, start = decoded
            track = _mono_resampled(samples, rate, AUDIO_SAMPLE_RATE)
            offset = int(round((start - origin) * AUDIO_SAMPLE_RATE))  # audio starting late: pad
            if offset > 0:
                track = torch.cat([torch.zeros(offset), track])
            elif offset < 0:
                track = track[-offset:]
            want = int(round(count / fps * AUDIO_SAMPLE_RATE))
            if fps == VIDEO_FPS:
                want = count * SAMPLES_PER_FRAME
            track = _fit_length(track, want)
    return VideoClip(frames=frames, fps=float(fps), audio=track, source=str(path))


def _fit_length(audio: torch.Tensor, length: int) -> torch.Tensor:
    if audio.shape[0] >= length:
        return audio[:length].contiguous()
    return torch.cat([audio, audio.new_zeros(length - audio.shape[0])])


def read_image(path: str | Path) -> torch.Tensor:
    """Read an image (png, jpg, webp...) as ``(3, H, W)`` uint8 RGB, honouring EXIF rotation.

    Raises:
        InputError: missing or undecodable file.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = _check_file(path, "image file")
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            array = np.asarray(img.convert("RGB"))  # (H, W, 3)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise InputError(f"cannot read image file {path}: not an image PIL can decode ({err})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def read_portrait(
    path: str | Path, resolution: int | None = None, landmarker: str | Path | FaceAnalyzer | None = None
) -> torch.Tensor:
    """Read a reference portrait and check it shows a face; optionally crop the face square.

    Args:
        path: image file.
        resolution: if given, return the square face crop resized to ``resolution``.
        landmarker: path to ``face_landmarker.task`` or an open :class:`FaceAnalyzer`.

    Returns:
        ``(3, H, W)`` (or ``(3, R, R)`` when cropped) uint8 RGB.

    Raises:
        InputError: unreadable image, or no face in it (the message names the file).
    """
    from eartalk.core.media.face import FaceAnalyzer, crop_frames, face_boxes

    image = read_image(path)
    if isinstance(landmarker, FaceAnalyzer):
        track = landmarker.detect(image, what=str(path))
    else:
        with FaceAnalyzer(landmarker) as analyzer:
            track = analyzer.detect(image, what=str(path))
    if resolution is None:
        return image
    boxes = face_boxes(track, int(image.shape[1]), int(image.shape[2]), smooth=0.0)
    return crop_frames(image[None], boxes, resolution)[0]


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------
def available_video_encoder() -> str:
    """Name of the encoder :func:`write_video` uses: the first H.264 encoder FFmpeg has."""
    import av

    for name in H264_ENCODERS:
        try:
            av.codec.Codec(name, "w")
        except (av.error.FFmpegError, ValueError):
            continue
        return name
    return FALLBACK_ENCODER


def write_video(
    path: str | Path,
    frames: torch.Tensor,
    fps: float = VIDEO_FPS,
    audio: torch.Tensor | np.ndarray | None = None,
    sample_rate: int = AUDIO_SAMPLE_RATE,
    *,
    crf: int = 18,
) -> Path:
    """Write frames (and audio) to an H.264 + AAC mp4.

    The audio is trimmed or zero-padded to the video's duration so both tracks end together, and
    both start at time 0 (in sync).

    Args:
        path: output file (parent folders are created).
        frames: ``(T, 3, H, W)`` uint8 RGB (odd sizes are padded by one edge pixel for yuv420p).
        fps: frame rate.
        audio: ``(S,)`` float mono audio at ``sample_rate`` in [-1, 1], or None for no audio track.
        sample_rate: rate of ``audio``.
        crf: H.264 quality (lower is better; 18 is visually lossless).

    Returns:
        The written path.
    """
    import av

    path = Path(path)
    if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[1] != 3:
        shape = tuple(frames.shape) if hasattr(frames, "shape") else type(frames).__name__
        raise ValueError(f"write_video expects frames of shape (T, 3, H, W), got {shape}")
    if frames.shape[0] == 0:
        raise InputError(f"cannot write {path}: no frames")
    if frames.dtype != torch.uint8:
        raise ValueError(f"write_video expects uint8 frames, got {frames.dtype}")
    height, width = int(frames.shape[2]), int(frames.shape[3])
    pad_h, pad_w = height % 2, width % 2
    video = frames.permute(0, 2, 3, 1).cpu().numpy()  # (T, H, W, 3)
    if pad_h or pad_w:
        video = np.pad(video, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    path.parent.mkdir(parents=True, exist_ok=True)

    codec = available_video_encoder()
    if codec == FALLBACK_ENCODER:
        warnings.warn(
            f"no H.264 encoder ({', '.join(H264_ENCODERS)}) in this FFmpeg build; writing {path} "
            "with MPEG-4 part 2 instead", stacklevel=2,
        )
    rate = Fraction(fps).limit_denominator(1001)
    container = av.open(str(path), mode="w")
    try:
        vstream = container.add_stream(codec, rate=rate)
        vstream.width, vstream.height = width + pad_w, height + pad_h
        vstream.pix_fmt = "yuv420p"
        if codec == "libx264":
            vstream.options = {"crf": str(crf), "preset": "medium"}
        astream = None
        if audio is not None:
            astream = container.add_stream("aac", rate=int(sample_rate), layout="mono")
            astream.bit_rate = 128_000
        for image in video:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            for packet in vstream.encode(frame):
                container.mux(packet)
        for packet in vstream.encode():
            container.mux(packet)
        if astream is not None:
            wave = torch.as_tensor(np.asarray(audio), dtype=torch.float32).reshape(-1)
            wave = _fit_length(wave, int(round(len(video) / float(rate) * sample_rate)))
            wave = wave.clamp(-1.0, 1.0).numpy()
            chunk = 1024
            for start in range(0, wave.shape[0], chunk):
                piece = np.ascontiguousarray(wave[None, start : start + chunk])  # (1, n)
                aframe = av.AudioFrame.from_ndarray(piece, format="fltp", layout="mono")
                aframe.sample_rate = int(sample_rate)
                aframe.pts = start
                aframe.time_base = Fraction(1, int(sample_rate))
                for packet in astream.encode(aframe):
                    container.mux(packet)
            for packet in astream.encode():
                container.mux(packet)
    finally:
        container.close()
    return path


# --------------------------------------------------------------------------------------------
# whole samples
# --------------------------------------------------------------------------------------------
def load_sample(
    path: str | Path,
    need_face: bool = True,
    num_frames: int | None = None,
    resolution: int | None = None,
    landmarker: str | Path | FaceAnalyzer | None = None,
) -> Sample:
    """Read a video into a :class:`Sample`: 25 fps frames, 16 kHz audio, face track, metadata.

    Args:
        path: video file.
        need_face: run MediaPipe's FaceLandmarker and fill ``sample.face``.
        num_frames: read at most this many frames (from the start).
        resolution: if given, crop a square around the face (smoothed over time) and resize it to
            ``resolution``; the face track's landmarks are then in crop coordinates (normalised to
            the crop), blendshapes and transformation matrices are unchanged.
        landmarker: path to ``face_landmarker.task`` or an open :class:`FaceAnalyzer` to reuse
            (default: ``$EARTALK_FACE_LANDMARKER``).

    Returns:
        A sample with ``metadata = {"source": str(path)}``.

    Raises:
        InputError: unreadable video, or no face in any frame when a face is needed.
        WeightsNotFoundError: a face is needed and no landmarker model is found.
    """
    from eartalk.core.media.face import FaceAnalyzer, crop_frames, face_boxes, track_in_crop

    clip = read_video(path, max_frames=num_frames)
    frames, face = clip.frames, None
    if need_face or resolution is not None:
        if isinstance(landmarker, FaceAnalyzer):
            face = landmarker.track(frames, fps=clip.fps)
        else:
            with FaceAnalyzer(landmarker) as analyzer:
                face = analyzer.track(frames, fps=clip.fps)
        if not bool(face.present.any()):
            raise InputError(f"no face found in any frame of {path}")
    if resolution is not None:
        assert face is not None
        height, width = int(frames.shape[2]), int(frames.shape[3])
        boxes = face_boxes(face, height, width)
        frames = crop_frames(frames, boxes, resolution)
        face = track_in_crop(face, boxes, height, width)
    return Sample(
        frames=frames,
        audio=clip.audio,
        face=face if need_face else None,
        metadata={"source": str(path)},
        num_frames=clip.num_frames,
    )
