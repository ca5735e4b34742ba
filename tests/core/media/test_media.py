"""Media I/O: constant-rate video from any container, 16 kHz mono audio, mp4 writing in sync,
and clear InputErrors for missing, corrupt, empty and silent inputs."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from eartalk.core.errors import InputError
from eartalk.core.media.io import load_sample, read_audio, read_image, read_portrait, read_video, write_video
from eartalk.core.types import SAMPLES_PER_FRAME


def _write_audio(path, wave: np.ndarray, rate: int, codec: str) -> None:
    """Encode ``wave`` (S, C) with PyAV (mp3 / aac) for container tests."""
    channels = wave.shape[1]
    layout = "stereo" if channels == 2 else "mono"
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate, layout=layout, format="fltp")
        fmt = stream.codec_context.format.name
        for start in range(0, wave.shape[0], 1152):
            piece = np.ascontiguousarray(wave[start : start + 1152].T.astype(np.float32))  # (C, n)
            if not fmt.endswith("p"):
                piece = np.ascontiguousarray(piece.T.reshape(1, -1))
            frame = av.AudioFrame.from_ndarray(piece, format=fmt, layout=layout)
            frame.sample_rate = rate
            frame.pts = start
            frame.time_base = Fraction(1, rate)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _tone(rate: int, seconds: float, freq: float = 440.0, channels: int = 2) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    mono = 0.5 * np.sin(2 * np.pi * freq * t)
    return np.stack([mono] * channels, axis=1).astype(np.float32)  # (S, C)


def _peak_hz(audio: torch.Tensor, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(audio.numpy()))
    return float(np.argmax(spectrum) * rate / audio.shape[0])


# -- reading real videos ------------------------------------------------------------------------
def test_read_video_real_clip_is_25fps_with_aligned_audio(real_dir):
    # 61 frames at 29.97 fps, the last one shown until 2.069 s -> floor(2.069 * 25) = 51 frames.
    clip = read_video(real_dir / "video" / "V-Express__RD_Radio10_0_clip_0.mp4")
    assert clip.fps == 25.0
    assert clip.frames.dtype == torch.uint8 and clip.frames.shape[1:] == (3, 512, 512)
    assert clip.num_frames == 51
    assert clip.audio is not None and clip.audio.dtype == torch.float32
    assert clip.audio.shape == (clip.num_frames * SAMPLES_PER_FRAME,)
    assert float(clip.audio.abs().max()) > 0.05  # speech, not silence


def test_read_video_variable_frame_rate_clip(real_dir):
    # video-retalking__1.mp4: variable frame rate, 135 frames over 6.13 s (about 22 fps).
    path = real_dir / "video" / "video-retalking__1.mp4"
    clip = read_video(path, max_frames=40)
    assert clip.num_frames == 40
    assert clip.audio.shape == (40 * SAMPLES_PER_FRAME,)
    # Slower than 25 fps: some source frames are shown twice, but most frames are distinct.
    changed = (clip.frames[1:].float() - clip.frames[:-1].float()).abs().mean(dim=(1, 2, 3)) > 0
    assert 25 <= int(changed.sum()) < 39
    # Stopping early gives the same frames as reading further.
    longer = read_video(path, max_frames=50, audio=False)
    assert torch.equal(longer.frames[:40], clip.frames)


def test_read_video_resamples_by_timestamps(tmp_path):
    """A hand-made variable-rate file: each output frame shows the source frame on screen then."""
    path = tmp_path / "vfr.mp4"
    pts_ms = [0, 40, 120, 160, 300]  # gaps of 40, 80, 40 and 140 ms
    levels = [0, 60, 120, 180, 240]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for pts, level in zip(pts_ms, levels, strict=True):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), level, np.uint8), format="rgb24")
            frame.pts = pts
            frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    clip = read_video(path)
    shown = [int(round(float(f.float().mean()) / 60)) for f in clip.frames]
    # Output times 0, 40, ..., 280 ms -> source frames on screen at those times.
    assert shown[:8] == [0, 1, 1, 2, 3, 3, 3, 3]
    assert clip.audio is None


# -- reading audio ----------------------------------------------------------------------------
def test_read_audio_any_rate_and_channels(real_dir):
    audio = read_audio(real_dir / "audio" / "SadTalker__chinese_news.wav")  # 48 kHz stereo, 8 s
    assert audio.dim() == 1 and audio.dtype == torch.float32
    assert abs(audio.shape[0] - 8.0 * 16000) <= 16
    assert 0.05 < float(audio.abs().max()) <= 1.0


@pytest.mark.parametrize(("suffix", "codec", "rate"), [(".mp3", "libmp3lame", 44100), (".m4a", "aac", 48000)])
def test_read_audio_compressed_containers(tmp_path, suffix, codec, rate):
    path = tmp_path / f"tone{suffix}"
    _write_audio(path, _tone(rate, 1.0, 440.0), rate, codec)
    audio = read_audio(path)
    assert abs(audio.shape[0] - 16000) < 0.06 * 16000  # codec padding is small
    assert abs(_peak_hz(audio) - 440.0) < 5.0


# -- bad inputs ---------------------------------------------------------------------------------
def test_missing_files_name_the_file(tmp_path):
    for reader in (read_video, read_audio, read_image):
        with pytest.raises(InputError, match="nope"):
            reader(tmp_path / "nope.mp4")


@pytest.mark.parametrize("name", ["garbage.mp4", "garbage.wav", "garbage.png"])
def test_corrupt_files_raise_input_error(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    reader = {".mp4": read_video, ".wav": read_audio, ".png": read_image}[path.suffix]
    with pytest.raises(InputError, match=name):
        reader(path)


def test_empty_and_silent_audio(tmp_path):
    empty_file = tmp_path / "zero_bytes.wav"
    empty_file.write_bytes(b"")
    with pytest.raises(InputError, match="zero_bytes.wav.*empty"):
        read_audio(empty_file)
    no_samples = tmp_path / "no_samples.wav"
    sf.write(no_samples, np.zeros((0, 1), np.float32), 16000)
    with pytest.raises(InputError, match="no_samples.wav.*no samples"):
        read_audio(no_samples)
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(16000, np.float32), 16000)
    with pytest.raises(InputError, match="silent.wav.*silent"):
        read_audio(silent)
    assert torch.count_nonzero(read_audio(silent, allow_silent=True)) == 0


def test_audio_only_file_is_not_a_video(tmp_path):
    path = tmp_path / "speech.wav"
    sf.write(path, _tone(16000, 0.5, channels=1), 16000)
    with pytest.raises(InputError, match="no video stream"):
        read_video(path)


# -- images ---------------------------------------------------------------------------------------
def test_read_image_converts_to_rgb(tmp_path):
    from PIL import Image

    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "x.png")
    image = read_image(tmp_path / "x.png")
    assert image.shape == (3, 20, 30) and image.dtype == torch.uint8
    assert image[0].float().mean() == 200 and image[1:].sum() == 0


def test_portrait_without_face_names_the_file(tmp_path, landmarker_path):
    from PIL import Image

    path = tmp_path / "flat_gray.png"
    Image.fromarray(np.full((256, 256, 3), 128, np.uint8)).save(path)
    with pytest.raises(InputError, match=r"no face found in .*flat_gray\.png"):
        read_portrait(path, landmarker=landmarker_path)


def test_read_portrait_crops_the_face(real_dir, landmarker_path):
    crop = read_portrait(real_dir / "image" / "LivePortrait__s12.jpg", resolution=64, landmarker=landmarker_path)
    assert crop.shape == (3, 64, 64) and crop.dtype == torch.uint8


# -- writing --------------------------------------------------------------------------------------
def test_write_then_read_roundtrip_keeps_length_and_sync(tmp_path):
    frames_n = 50
    frames = torch.zeros(frames_n, 3, 64, 64, dtype=torch.uint8)
    for t in range(frames_n):  # a bright square moving right, one pixel per frame
        frames[t, :, 20:40, t : t + 10] = 255
    audio = torch.zeros(frames_n * SAMPLES_PER_FRAME)
    click_frame = 30
    start = click_frame * SAMPLES_PER_FRAME
    audio[start : start + 320] = torch.sin(torch.arange(320) * 2 * np.pi * 1000 / 16000)  # a 1 kHz burst
    path = write_video(tmp_path / "out" / "clip.mp4", frames, audio=audio)
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        assert container.streams.audio[0].codec_context.name == "aac"
    clip = read_video(path)
    assert clip.num_frames == frames_n
    assert (clip.frames.float() - frames.float()).abs().mean() < 6.0
    back = read_audio(path)
    assert abs(back.shape[0] - audio.shape[0]) <= SAMPLES_PER_FRAME
    # The burst is still in frame `click_frame` (A/V sync within a frame).
    energy = clip.audio.reshape(frames_n, SAMPLES_PER_FRAME).pow(2).sum(dim=1)
    assert int(energy.argmax()) == click_frame


def test_write_video_pads_odd_sizes_and_checks_input(tmp_path):
    frames = torch.full((3, 3, 31, 33), 90, dtype=torch.uint8)
    clip = read_video(write_video(tmp_path / "odd.mp4", frames))
    assert clip.frames.shape == (3, 3, 32, 34)
    with pytest.raises(ValueError, match=r"\(T, 3, H, W\)"):
        write_video(tmp_path / "bad.mp4", torch.zeros(3, 32, 32, dtype=torch.uint8))


# -- samples --------------------------------------------------------------------------------------
def test_load_sample_with_face_crop(real_dir, landmarker_path):
    path = real_dir / "video" / "V-Express__RD_Radio10_0_clip_0.mp4"
    sample = load_sample(path, num_frames=20, resolution=64, landmarker=landmarker_path)
    assert sample.num_frames == 20
    assert sample.frames.shape == (20, 3, 64, 64)
    assert sample.audio.shape == (20 * SAMPLES_PER_FRAME,)
    assert sample.metadata["source"] == str(path)
    face = sample.face
    assert bool(face.present.all())
    xy = face.landmarks[..., :2]  # crop coordinates: the face sits inside the crop
    assert float(xy.min()) > 0.0 and float(xy.max()) < 1.0
    center = xy.mean(dim=1).mean(dim=0)
    assert torch.allclose(center, torch.tensor([0.5, 0.5]), atol=0.12)
