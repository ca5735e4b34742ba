"""FID through torchmetrics' ``FrechetInceptionDistance`` with a local Inception file.

Two weight formats are accepted, both resolved by :mod:`eartalk.metrics.weights` (key ``inception``):

* ``pt_inception-2015-12-05-6726825d.pth`` (the TF Inception port of pytorch-fid/torch-fidelity):
  loaded by torchmetrics itself with ``feature_extractor_weights_path=<file>`` and
  ``antialias=False`` (TF-compatible resize; paper-comparable). This needs the ``torch-fidelity``
  package, which itself needs torchvision.
* a TorchScript Inception (e.g. ``inception-2015-12-05.pt`` extracted from NVlabs'
  stylegan2-ada-pytorch pickle) called as ``module(images_uint8, return_features=True)`` and handed
  to torchmetrics as a custom ``feature`` module (any ``nn.Module`` works there).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance

from eartalk.core.errors import ConfigError
from eartalk.metrics.weights import load_torchscript, resolve_weights


class TorchScriptFeatures(nn.Module):
    """Wrap a TorchScript extractor ``f(images_uint8, return_features=True) -> (N, D)``."""

    def __init__(self, module: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.module = module.eval()
        with torch.no_grad():
            probe = self.module(torch.zeros(2, 3, 64, 64, dtype=torch.uint8), return_features=True)
        self.num_features = int(probe.shape[-1])

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:  # (N, 3, H, W) uint8 -> (N, D)
        return self.module(images, return_features=True).double()


def _is_torchscript(file: Path) -> bool:
    try:
        load_torchscript(file)
    except (RuntimeError, ValueError):
        return False
    return True


def build_fid(path: str | Path | None = None, **kwargs) -> tuple[FrechetInceptionDistance, Path]:
    """A torchmetrics FID metric on a local Inception file (see the module docstring).

    Raises:
        WeightsNotFoundError: no file found.
        ConfigError: a ``.pth`` state dict was given but torch-fidelity is not installed.
    """
    file = resolve_weights("inception", path)
    if _is_torchscript(file):
        extractor = TorchScriptFeatures(load_torchscript(file))
        return FrechetInceptionDistance(feature=extractor, **kwargs), file
    try:
        metric = FrechetInceptionDistance(
            feature=2048, feature_extractor_weights_path=str(file), antialias=False, **kwargs
        )
    except ModuleNotFoundError as err:
        raise ConfigError(
            f"FID with the state-dict file {file} needs torch-fidelity (pip install torch-fidelity; it needs "
            "torchvision); alternatively use a TorchScript Inception file (see docs/metrics.md)"
        ) from err
    return metric, file


@torch.no_grad()
def fid_from_frames(metric: FrechetInceptionDistance, generated: list[Tensor], reference: list[Tensor],
                    batch_size: int = 32) -> float:
    """Functional use: feed ``(T, 3, H, W)`` uint8 frame stacks (real = reference) and compute FID."""
    metric.reset()
    for frames, real in [(f, False) for f in generated] + [(f, True) for f in reference]:
        for i in range(0, frames.shape[0], batch_size):
            metric.update(frames[i:i + batch_size], real=real)
    return float(metric.compute())
