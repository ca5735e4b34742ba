"""One resolver for every pretrained weight file a metric needs. Nothing is ever downloaded.

Search order for a file (first hit wins):

1. an explicit path (a metric option such as ``weights=...`` or a config key);
2. the per-file environment variable (e.g. ``EARTALK_SYNCNET_WEIGHTS=/path/syncnet_v2.model``);
3. ``$EARTALK_WEIGHTS_DIR/<file>``;
4. ``$TORCH_HOME/hub/checkpoints/<file>`` (``~/.cache/torch`` when ``TORCH_HOME`` is unset).

A file found nowhere raises :class:`~eartalk.core.errors.WeightsNotFoundError` naming the file, its
upstream project, its licence note and where to put it.

Fidelity: a result computed with weights whose sha256 matches a known reference hash is
``"reference"``; any other user-provided file gives ``"unverified-weights"``. We record hashes only
where we know them: for torch-hub style names (``name-<hex>.pth``) the hex suffix is the prefix of
the file's sha256 by torch hub's own convention, and that prefix is what we check.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import attrs

from eartalk.core.errors import WeightsNotFoundError

ENV_DIR = "EARTALK_WEIGHTS_DIR"

REFERENCE = "reference"
UNVERIFIED = "unverified-weights"
PROXY = "proxy"


@attrs.frozen
class WeightsSpec:
    """What a metric's weight file is and where it comes from.

    Attributes:
        key: short name used in options and messages (``"syncnet"``).
        filename: the upstream file name looked up in the weights directories.
        env_var: per-file environment variable holding a full path.
        project: upstream project (and URL) that publishes the file.
        licence: licence note for the weights.
        sha256_prefix: known prefix of the reference file's sha256, or ``""`` when not known.
        note: how to obtain or convert the file.
    """

    key: str
    filename: str
    env_var: str
    project: str
    licence: str
    sha256_prefix: str = ""
    note: str = ""


KNOWN_WEIGHTS: dict[str, WeightsSpec] = {
    spec.key: spec
    for spec in (
        WeightsSpec(
            "inception",
            "pt_inception-2015-12-05-6726825d.pth",
            "EARTALK_INCEPTION_WEIGHTS",
            "pytorch-fid / torch-fidelity (https://github.com/mseitzer/pytorch-fid), port of TF Inception-v3 2015-12-05",
            "Apache-2.0 (pytorch-fid); original TF weights by Google",
            sha256_prefix="6726825d",
            note="used through torchmetrics (needs torch-fidelity); alternatively a TorchScript Inception "
            "(e.g. `inception-2015-12-05.pt` from NVlabs stylegan2-ada-pytorch) called with return_features=True",
        ),
        WeightsSpec(
            "i3d",
            "i3d_torchscript.pt",
            "EARTALK_I3D_WEIGHTS",
            "StyleGAN-V FVD port of I3D Kinetics-400 (https://github.com/universome/stylegan-v)",
            "Apache-2.0 (kinetics-i3d by DeepMind); check StyleGAN-V's terms",
        ),
        WeightsSpec(
            "syncnet",
            "syncnet_v2.model",
            "EARTALK_SYNCNET_WEIGHTS",
            "joonson/syncnet_python (https://github.com/joonson/syncnet_python)",
            "MIT (code); the model is distributed by the VGG group for research use",
            note="fetch with syncnet_python's download_model.sh",
        ),
        WeightsSpec(
            "deep3d",
            "epoch_20.pth",
            "EARTALK_DEEP3D_WEIGHTS",
            "Deep3DFaceRecon_pytorch (https://github.com/sicxu/Deep3DFaceRecon_pytorch), checkpoints/<name>/epoch_20.pth",
            "MIT (code); weights trained with BFM, research use (Basel Face Model licence)",
        ),
        WeightsSpec(
            "arcface",
            "arcface_r100.pth",
            "EARTALK_ARCFACE_WEIGHTS",
            "insightface arcface_torch iresnet (https://github.com/deepinsight/insightface), e.g. ms1mv3_arcface_r100_fp16/backbone.pth",
            "insightface models: non-commercial research use only",
            note="rename the backbone.pth you use to arcface_r100.pth (or pass its path); r18/r34/r50 work with arch option",
        ),
        WeightsSpec(
            "lpips",
            "lpips_alex.pth",
            "EARTALK_LPIPS_WEIGHTS",
            "LPIPS (https://github.com/richzhang/PerceptualSimilarity); a TorchScript module f(x, y) -> distance",
            "BSD-2-Clause (LPIPS); AlexNet backbone weights from torchvision (BSD-3-Clause)",
            note="script the LPIPS network (torch.jit.script(lpips.LPIPS(net='alex'))) and save it with torch.jit.save",
        ),
    )
}


def _hub_dir() -> Path:
    torch_home = os.environ.get("TORCH_HOME")
    base = Path(torch_home) if torch_home else Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "torch"
    return base / "hub" / "checkpoints"


def candidate_paths(spec: WeightsSpec, path: str | os.PathLike | None = None) -> list[Path]:
    """The places :func:`resolve_weights` looks at, in order."""
    out: list[Path] = []
    if path:
        out.append(Path(path).expanduser())
    if os.environ.get(spec.env_var):
        out.append(Path(os.environ[spec.env_var]).expanduser())
    if os.environ.get(ENV_DIR):
        out.append(Path(os.environ[ENV_DIR]).expanduser() / spec.filename)
    out.append(_hub_dir() / spec.filename)
    return out


def get_spec(key: str | WeightsSpec) -> WeightsSpec:
    """The :class:`WeightsSpec` of a known key (or the spec itself)."""
    if isinstance(key, WeightsSpec):
        return key
    if key not in KNOWN_WEIGHTS:
        raise KeyError(f"unknown weights key {key!r}; known: {', '.join(sorted(KNOWN_WEIGHTS))}")
    return KNOWN_WEIGHTS[key]


def resolve_weights(key: str | WeightsSpec, path: str | os.PathLike | None = None) -> Path:
    """Find a weight file locally.

    Args:
        key: a key of :data:`KNOWN_WEIGHTS` or a :class:`WeightsSpec`.
        path: explicit path (from a metric option or config key); when given and missing, it is
            an error even if the file exists elsewhere.

    Returns:
        The existing file.

    Raises:
        WeightsNotFoundError: nothing found; the message says what the file is and where to put it.
    """
    spec = get_spec(key)
    if path:
        explicit = Path(path).expanduser()
        if explicit.is_file():
            return explicit
        raise WeightsNotFoundError(_missing_message(spec, [explicit], explicit=True))
    tried = candidate_paths(spec)
    for candidate in tried:
        if candidate.is_file():
            return candidate
    raise WeightsNotFoundError(_missing_message(spec, tried))


def _missing_message(spec: WeightsSpec, tried: list[Path], explicit: bool = False) -> str:
    where = "; ".join(str(p) for p in tried)
    head = (
        f"weights file {tried[0]} for {spec.key!r} does not exist"
        if explicit
        else f"weights file {spec.filename!r} for {spec.key!r} not found (looked in: {where})"
    )
    extra = f" Note: {spec.note}." if spec.note else ""
    return (
        f"{head}. Upstream: {spec.project}. Licence: {spec.licence}.{extra} eartalk never downloads weights: "
        f"put {spec.filename} in ${ENV_DIR} or {_hub_dir()}, set {spec.env_var}=/path/to/{spec.filename}, "
        "or pass the path explicitly (metric option `weights`)."
    )


@functools.lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime: float) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file (cached per path, size and modification time)."""
    stat = Path(path).stat()
    return _sha256_cached(str(Path(path).resolve()), stat.st_size, stat.st_mtime)


def weights_fidelity(key: str | WeightsSpec, path: str | os.PathLike) -> tuple[str, str]:
    """``(fidelity, sha256)`` of a resolved weight file: reference only on a known hash match."""
    spec = get_spec(key)
    sha = file_sha256(path)
    prefix = spec.sha256_prefix
    if prefix and sha.startswith(prefix.lower()) and Path(path).name == spec.filename:
        return REFERENCE, sha
    return UNVERIFIED, sha



def load_torchscript(path: str | os.PathLike):
    """``torch.jit.load`` on CPU, in eval mode.

    The reference detectors (I3D for FVD, NVlabs' Inception) are published as TorchScript, so we
    keep loading them that way; torch's deprecation notice for TorchScript is silenced here.

    Raises:
        RuntimeError: the file is not a TorchScript archive.
    """
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
        return torch.jit.load(str(path), map_location="cpu").eval()
