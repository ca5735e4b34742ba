"""Loud absence: a face-requiring third-party plugin trains on synthetic clips (which store no
face track), and a condition that is never present is reported with its likely cause."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import pytest
import torch

from eartalk.core.registry import get_registry

FACE_WIDTH = '''
import attrs, torch
from torch import nn
from eartalk.core.hookspecs import hookimpl
from eartalk.core.protocol import ConditionPlugin

class FaceWidth(ConditionPlugin):
    """Width of the face landmarks' bounding box, in crop widths."""
    name = "face_width"
    requires = frozenset({"face"})
    def __init__(self, d_model, options=None):
        super().__init__(d_model, options, slots=1, signal_dim=1)
        self.columns = ["width"]
        self.proj = nn.Sequential(nn.Linear(1, 16), nn.GELU(), nn.Linear(16, d_model))
    def extract(self, sample):
        track = sample.face  # the dataset fills it in for plugins that require a face
        x = track.landmarks[..., 0]
        width = (x.amax(dim=1) - x.amin(dim=1))[:, None].float()
        width[~track.present] = float("nan")
        return width
    def encode(self, signal):
        return self.proj((signal - 0.5) * 4)[:, :, None]

@hookimpl
def register_conditions():
    return [FaceWidth]
'''


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    from eartalk.core.data.synth import synthesize_dataset

    return synthesize_dataset(tmp_path_factory.mktemp("presence") / "data", clips=3, seconds=1.0, resolution=64, seed=5)


@pytest.fixture()
def face_width_installed(tmp_path: Path, monkeypatch):
    """The plugin as an installed third-party distribution (a real .dist-info with its entry point)."""
    import importlib
    import sys

    site = tmp_path / "site"
    info = site / "eartalk_face_width-1.0.dist-info"
    info.mkdir(parents=True)
    (site / "eartalk_face_width.py").write_text(FACE_WIDTH)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: eartalk-face-width\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[eartalk]\neartalk_face_width = eartalk_face_width\n")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    get_registry.cache_clear()
    yield
    get_registry.cache_clear()
    sys.modules.pop("eartalk_face_width", None)


def datamodule(root: Path):
    from eartalk.conditions import ConditionSpec, ConditionStack
    from eartalk.conditions.stack import build_plugins
    from eartalk.core.data.dataset import TalkingHeadDataModule

    torch.manual_seed(0)
    stack = ConditionStack(build_plugins([ConditionSpec("audio"), ConditionSpec("face_width")], d_model=64))
    return TalkingHeadDataModule(root, clip_frames=6, batch_size=2, stack=stack, val_fraction=0.0), stack


@pytest.mark.slow  # MediaPipe on 3 clips + 10 training steps
def test_face_plugin_on_synthetic_clips_is_present_and_its_tokenizer_trains(
        synth_root: Path, face_width_installed, landmarker_path: Path, monkeypatch, tmp_path: Path) -> None:
    from eartalk.conditions.presence import check_presence
    from eartalk.core.engine.model import build_model
    from eartalk.core.engine.presets import get_arch

    monkeypatch.setenv("EARTALK_FACE_LANDMARKER", str(landmarker_path))
    data, _ = datamodule(synth_root)
    report = check_presence(data, tmp_path)
    assert report.fraction("face_width") > 0.9, report.table()
    assert report.fraction("audio") == 1.0
    written = json.loads((tmp_path / "presence.json").read_text())
    assert written["conditions"]["face_width"]["present"] == pytest.approx(report.fraction("face_width"))

    torch.manual_seed(0)
    model = build_model(get_arch("tiny", window=3, period=6), data.stack)
    model.train()
    tokenizer = list(model.stack.plugin("face_width").proj.parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = [p.detach().clone() for p in tokenizer]
    received = []
    # The backbone's residual branches start at zero, so condition tokens get gradient from the
    # second or third step on; condition dropout may also null a whole batch now and then.
    for batch, _ in zip(itertools.cycle(data.train_dataloader()), range(10), strict=False):
        optimizer.zero_grad()
        model.loss(batch)["loss"].backward()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in tokenizer]
        assert all(torch.isfinite(g).all() for g in grads), "finite tokenizer gradients"
        received.append(sum(float(g.abs().sum()) for g in grads))
        optimizer.step()
    assert sum(r > 0 for r in received[4:]) >= 4, f"the face plugin's tokenizer receives gradient: {received}"
    assert any(not torch.equal(a, b) for a, b in zip(start, tokenizer, strict=True)), "and its weights train"


def test_never_present_condition_is_reported_loudly(
        synth_root: Path, face_width_installed, monkeypatch, tmp_path: Path, caplog) -> None:
    from eartalk.conditions.presence import check_presence

    monkeypatch.delenv("EARTALK_FACE_LANDMARKER", raising=False)
    data, _ = datamodule(synth_root)
    with caplog.at_level(logging.WARNING, logger="eartalk"):
        report = check_presence(data, tmp_path)
    assert report.fraction("face_width") == 0.0 and [c.name for c in report.low] == ["face_width"]
    loud = [r.getMessage() for r in caplog.records if "IS PRESENT ON 0.0% OF TRAINING FRAMES" in r.getMessage()]
    assert loud and "'face_width'" in loud[0]
    assert "requires face, and these clips have no face track" in loud[0] and "EARTALK_FACE_LANDMARKER" in loud[0]
    cause = json.loads((tmp_path / "presence.json").read_text())["conditions"]["face_width"]["cause"]
    assert "requires face" in cause


def test_metadata_condition_without_labels_names_the_keys(synth_root: Path, tmp_path: Path) -> None:
    from eartalk.conditions import ConditionStack
    from eartalk.conditions.presence import measure_presence
    from eartalk.conditions.testing import ToyCondition
    from eartalk.core.data.dataset import TalkingHeadDataset

    stack = ConditionStack([ToyCondition(16)])
    report = measure_presence(TalkingHeadDataset(synth_root, 6, stack), stack, items=4)
    (row,) = report.conditions
    assert row.fraction == 0.0 and "requires metadata" in row.cause and "metadata keys found" in row.cause
