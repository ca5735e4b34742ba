"""Shared real samples for the plugin tests, decoded and face-tracked once per session.

Decoding 512x512 video and running MediaPipe are the slow parts, so each clip is loaded once
(its first 3 s, face crops at 128 px) and every plugin test slices what it needs.
"""

from __future__ import annotations

import pytest
import torch

CLIP_FRAMES = 75


def _load(real_dir, landmarker_path, name: str):
    from eartalk.core.media.io import load_sample

    return load_sample(real_dir / "video" / name, num_frames=CLIP_FRAMES, resolution=128, landmarker=landmarker_path)


@pytest.fixture(scope="session")
def blink_sample(real_dir, landmarker_path):
    """A frontal talking clip with several blinks in its first 3 s (frames 10-12, 34-36, 56-57)."""
    return _load(real_dir, landmarker_path, "SadTalker__WDA_AlexandriaOcasioCortez_000.mp4")


@pytest.fixture(scope="session")
def motion_sample(real_dir, landmarker_path):
    """A clip with big head motion (LivePortrait d12)."""
    return _load(real_dir, landmarker_path, "LivePortrait__d12.mp4")


@pytest.fixture()
def speech_16k(real_dir) -> torch.Tensor:
    """8.7 s of German speech at 16 kHz (mono)."""
    from eartalk.core.media.io import read_audio

    return read_audio(real_dir / "audio" / "dreamtalk__German1.wav")


def save_pyannote_checkpoint(path, powerset: bool = False):
    """Write a small, randomly initialised pyannote.audio PyanNet checkpoint to ``path``.

    The file has the layout pyannote.audio writes (``state_dict``, ``hyper_parameters`` and the
    ``pyannote.audio`` section naming the architecture and task specifications).
    """
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.segmentation import PyanNet

    torch.manual_seed(0)
    model = PyanNet(sincnet={"stride": 10}, lstm={"hidden_size": 16, "num_layers": 1, "monolithic": True},
                    linear={"hidden_size": 16, "num_layers": 1})
    if powerset:
        specs = Specifications(problem=Problem.MONO_LABEL_CLASSIFICATION, resolution=Resolution.FRAME, duration=2.0,
                               classes=["spk1", "spk2"], powerset_max_classes=2, permutation_invariant=True)
    else:
        specs = Specifications(problem=Problem.MULTI_LABEL_CLASSIFICATION, resolution=Resolution.FRAME,
                               duration=2.0, classes=["speech"])
    model.specifications = specs
    model.build()
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                  "pytorch-lightning_version": "2.6.0"}
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return model


@pytest.fixture(scope="session")
def pyannote_checkpoint(tmp_path_factory):
    """(path, model) of a small multi-label ("speech") PyanNet checkpoint made by the test itself."""
    path = tmp_path_factory.mktemp("pyannote") / "pytorch_model.bin"
    return path, save_pyannote_checkpoint(path)


@pytest.fixture(scope="session")
def pyannote_powerset_checkpoint(tmp_path_factory):
    """(path, model) of a small powerset (2 speakers) PyanNet checkpoint, like segmentation-3.0."""
    path = tmp_path_factory.mktemp("pyannote_ps") / "segmentation.ckpt"
    return path, save_pyannote_checkpoint(path, powerset=True)
