"""Control fidelity: did the generated frames follow the commanded control signal?

For a control plugin (``head_pose``, ``blink``, ``gaze``, ``expression``, ``emotion``...), the
signal is re-extracted from the generated frames with the plugin's own ``extract`` and compared
with the commanded signal frame by frame (frames where either is NaN are ignored):

========== =============================================== =========
control    error                                           better
========== =============================================== =========
head_pose  MAE in degrees per axis (yaw, pitch, roll)      lower
blink      F1 of "eye closed" (score > 0.5), both eyes     higher
gaze       mean Euclidean error per eye in [-1, 1] units   lower
expression MAE over blendshapes                            lower
emotion    accuracy of the emotion index                   higher
other      MAE over all columns                            lower
========== =============================================== =========

Emotion needs a classifier that reads emotion from frames; the built-in ``emotion`` plugin reads
labels from metadata, so unless a plugin provides ``classify_frames(sample)``, emotion is skipped
with that reason.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from eartalk.core.types import Sample

BLINK_THRESHOLD = 0.5

#: control -> (headline key, higher is better)
HEADLINE = {
    "head_pose": ("mae_deg", False),
    "blink": ("f1", True),
    "gaze": ("error", False),
    "expression": ("mae", False),
    "emotion": ("accuracy", True),
}


class ControlSkipped(Exception):
    """The control cannot be re-extracted from frames (the message says why)."""


def _valid_rows(commanded: Tensor, extracted: Tensor) -> tuple[Tensor, Tensor]:
    n = min(commanded.shape[0], extracted.shape[0])
    a, b = commanded[:n].double(), extracted[:n].double()
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"control signals differ in width: {a.shape[1]} vs {b.shape[1]}")
    ok = torch.isfinite(a).all(1) & torch.isfinite(b).all(1)
    return a[ok], b[ok]


def binary_f1(predicted: Tensor, target: Tensor) -> float:
    """F1 of two boolean tensors; 1.0 when both are all-negative (nothing to detect, nothing detected)."""
    tp = float((predicted & target).sum())
    fp = float((predicted & ~target).sum())
    fn = float((~predicted & target).sum())
    if tp + fp + fn == 0:
        return 1.0
    return 2 * tp / (2 * tp + fp + fn)


def control_error(control: str, commanded: Tensor, extracted: Tensor) -> dict[str, float]:
    """Error between a commanded ``(T, D)`` signal and the one re-extracted from generated frames.

    Returns a dict with the headline key of :data:`HEADLINE` (``mae`` for unknown controls) plus
    per-component numbers and ``frames`` (how many frames were compared).
    """
    a, b = _valid_rows(commanded, extracted)
    out: dict[str, float] = {"frames": float(a.shape[0])}
    if a.shape[0] == 0:
        raise ControlSkipped(f"{control}: no frame where both the commanded and re-extracted signal are present")
    if control == "head_pose":
        mae = (a[:, :3] - b[:, :3]).abs().mean(0)
        out.update(yaw_mae_deg=float(mae[0]), pitch_mae_deg=float(mae[1]), roll_mae_deg=float(mae[2]))
        out["mae_deg"] = float(mae.mean())
    elif control == "blink":
        out["f1"] = binary_f1(b > BLINK_THRESHOLD, a > BLINK_THRESHOLD)
        out["mae"] = float((a - b).abs().mean())
    elif control == "gaze":
        left = torch.linalg.vector_norm(a[:, 0:2] - b[:, 0:2], dim=1)
        right = torch.linalg.vector_norm(a[:, 2:4] - b[:, 2:4], dim=1)
        out.update(left_error=float(left.mean()), right_error=float(right.mean()))
        out["error"] = float(torch.cat([left, right]).mean())
    elif control == "emotion":
        out["accuracy"] = float((a[:, 0].round() == b[:, 0].round()).double().mean())
    else:
        out["mae"] = float((a - b).abs().mean())
    return out


def reextract(plugin, sample: Sample) -> Tensor:
    """The plugin's signal re-extracted from a generated sample's frames.

    Raises:
        ControlSkipped: the control has no extractor that reads frames (emotion without classifier).
    """
    if plugin.name == "emotion":
        classify = getattr(plugin, "classify_frames", None)
        if classify is None:
            raise ControlSkipped(
                "emotion: no emotion classifier is available (the emotion plugin reads labels from metadata, "
                "not from frames), so emotion accuracy cannot be measured"
            )
        return classify(sample)
    requires = getattr(plugin, "requires", frozenset())
    if "metadata" in requires and not ({"frames", "face"} & set(requires)):
        raise ControlSkipped(f"{plugin.name}: its extractor reads metadata only, not the generated frames")
    return plugin.extract(sample)


def control_fidelity(plugin, commanded: Tensor, generated: Sample) -> dict[str, float]:
    """Functional control fidelity of one generated clip against its commanded signal."""
    return control_error(plugin.name, commanded, reextract(plugin, generated))


def headline(control: str, errors: dict[str, float]) -> tuple[str, float]:
    """The number reported as a control's value."""
    key = HEADLINE.get(control, ("mae", False))[0]
    return key, errors.get(key, math.nan)
