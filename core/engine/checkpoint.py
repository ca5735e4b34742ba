"""The one eartalk checkpoint format: the Lightning ``.ckpt`` the recipes write, plus an ``eartalk`` record.

A checkpoint is a ``torch.save`` dict with the weights under ``state_dict`` (keys prefixed by the
recipe module's attribute, ``model.`` or ``vae.``) and an ``eartalk`` record::

    {"format": 1, "kind": "model" | "vae", "version": "0.1.0", "arch": {...plain ModelArch...},
     "conditions": [{"name", "options", "dropout"}, ...],   # the stack it was trained with
     "plugins": [{"name", "signal_dim", "slots", "options"}, ...],
     "latent_stats": {"mean": [...], "std": [...]}, "state_prefix": "model."}

Lightning adds its own keys (optimiser, loops, callbacks) for resuming; the loaders here ignore
them. This module imports neither Lightning nor the recipes: reading a checkpoint needs only torch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import torch

from eartalk.core.errors import InputError, WeightsNotFoundError

FORMAT_VERSION = 1
KINDS = ("model", "vae")
STATE_PREFIX = {"model": "model.", "vae": "vae."}
WHO_WRITES = {
    "model": "the `train` recipe writes it as runs/<run>/checkpoints/last.ckpt "
    "(e.g. `eartalk train recipes/configs/eartalk_tiny_train.yaml`)",
    "vae": "the `vae` recipe writes it as runs/<run>/checkpoints/vae.ckpt "
    "(e.g. `eartalk train recipes/configs/vae_tiny_train.yaml`)",
}
WHAT = {"model": "an eartalk model checkpoint", "vae": "a frame-VAE checkpoint"}


@attrs.frozen
class CheckpointInfo:
    """What a checkpoint file holds (its ``eartalk`` record, read and checked).

    Attributes:
        path: the file.
        kind: ``model`` or ``vae``.
        version: eartalk version that wrote it.
        arch: plain-data ``ModelArch``.
        conditions: condition specs (plain data) of the stack it was trained with (``[]`` for a VAE).
        plugins: ``[{"name", "signal_dim", "slots", "options"}]`` of that stack (options complete, with defaults).
        latent_stats: ``{"mean": [...], "std": [...]}`` of the VAE latents.
        global_step: training step it was saved at (None when unknown).
    """

    path: Path
    kind: str
    version: str
    arch: dict[str, Any]
    conditions: list[dict[str, Any]]
    plugins: list[dict[str, Any]]
    latent_stats: dict[str, list[float]]
    global_step: int | None

    @property
    def condition_names(self) -> list[str]:
        return [c["name"] for c in self.conditions]


def make_record(kind: str, arch: Any, vae: Any, stack: Any = None, conditions: Any = None) -> dict[str, Any]:
    """The ``eartalk`` record of a checkpoint.

    Args:
        kind: ``model`` or ``vae``.
        arch: the ``ModelArch``.
        vae: the :class:`~eartalk.core.engine.vae.FrameVAE` (its latent statistics are stored).
        stack: the condition stack (model checkpoints).
        conditions: the stack's ``ConditionSpec`` list, in slot order (model checkpoints).
    """
    from eartalk import __version__
    from eartalk.core.config import unstructure
    from eartalk.core.engine.presets import arch_to_dict

    if kind not in KINDS:
        raise ValueError(f"checkpoint kind must be one of {KINDS}, got {kind!r}")
    plugins = []
    if stack is not None:
        plugins = [
            {
                "name": s.name,
                "signal_dim": int(stack.plugin(s.name).signal_dim),
                "slots": int(s.slots),
                "options": unstructure(stack.plugin(s.name).options),
            }
            for s in stack.layout
        ]
    return {
        "format": FORMAT_VERSION,
        "kind": kind,
        "version": __version__,
        "arch": arch_to_dict(arch),
        "conditions": [unstructure(c) for c in (conditions or [])],
        "plugins": plugins,
        "latent_stats": {
            "mean": [float(v) for v in vae.latent_mean.detach().cpu()],
            "std": [float(v) for v in vae.latent_std.detach().cpu()],
        },
        "state_prefix": STATE_PREFIX[kind],
    }


def _load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise WeightsNotFoundError(f"checkpoint {path} does not exist")
    try:
        # Lightning checkpoints hold plain Python objects besides tensors (hyper-parameters, loop
        # state), so weights_only=False: only open checkpoints you trust (your own runs).
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise InputError(f"cannot read checkpoint {path} ({type(err).__name__}: {err}); it is truncated or not a checkpoint") from None
    if not isinstance(ckpt, dict):
        raise InputError(f"{path} is not a checkpoint (a {type(ckpt).__name__}, not a dict)")
    return ckpt


def _info(path: Path, ckpt: Mapping[str, Any], expect: str | None) -> CheckpointInfo:
    record = ckpt.get("eartalk")
    wanted = f"; expected {WHAT[expect]}: {WHO_WRITES[expect]}" if expect else ""
    if not isinstance(record, Mapping):
        guess = ""
        config = (ckpt.get("hyper_parameters") or {}).get("config") if isinstance(ckpt.get("hyper_parameters"), Mapping) else None
        if isinstance(config, Mapping) or "state_dict" in ckpt:
            guess = " (it looks like a Lightning checkpoint written by an eartalk older than checkpoint format 1; retrain it)"
        raise InputError(f"{path} is not an eartalk checkpoint: it has no `eartalk` record{guess}{wanted}")
    fmt = record.get("format")
    if fmt != FORMAT_VERSION:
        newer = isinstance(fmt, int) and fmt > FORMAT_VERSION
        raise InputError(
            f"{path} uses eartalk checkpoint format {fmt!r} (written by eartalk {record.get('version', '?')}); this eartalk "
            f"reads format {FORMAT_VERSION} only: "
            + ("upgrade eartalk to read it" if newer else "retrain it with this version, or load it with the eartalk that wrote it")
        )
    kind = record.get("kind")
    if kind not in KINDS:
        raise InputError(f"{path}: unknown checkpoint kind {kind!r} (expected one of {', '.join(KINDS)})")
    if expect is not None and kind != expect:
        raise InputError(f"{path} is {WHAT[kind]} ({WHO_WRITES[kind].split(' as ')[0]}), not {WHAT[expect]}{wanted}")
    step = ckpt.get("global_step")
    return CheckpointInfo(
        path=path,
        kind=kind,
        version=str(record.get("version", "?")),
        arch=dict(record["arch"]),
        conditions=[dict(c) for c in record.get("conditions", [])],
        plugins=[dict(p) for p in record.get("plugins", [])],
        latent_stats=dict(record.get("latent_stats", {})),
        global_step=int(step) if step is not None else None,
    )


def read_checkpoint(
    path: str | Path, expect: str | None = None, use_ema: bool = True
) -> tuple[CheckpointInfo, dict[str, torch.Tensor]]:
    """Read and check a checkpoint; returns its record and its weights (recipe prefix removed).

    Args:
        path: a ``.ckpt`` written by an eartalk recipe (or :func:`write_checkpoint`).
        expect: ``model`` or ``vae`` to refuse the other kind with a message naming both.
        use_ema: take the exponential-moving-average weights where the checkpoint stores them
            (``ema_state_dict``, keys as in ``state_dict``; ``trainer.ema_decay``).

    Raises:
        WeightsNotFoundError: no such file.
        InputError: unreadable, not an eartalk checkpoint, another format version, or the wrong kind.
    """
    path = Path(path)
    ckpt = _load(path)
    info = _info(path, ckpt, expect)
    prefix = STATE_PREFIX[info.kind]
    state = ckpt.get("state_dict")
    if not isinstance(state, Mapping):
        raise InputError(f"{path}: the checkpoint has no weights (`state_dict`)")
    state = dict(state)
    ema = ckpt.get("ema_state_dict") if use_ema else None
    if isinstance(ema, Mapping):
        state.update({k: v.to(state[k].dtype) for k, v in ema.items() if k in state})
    return info, {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def read_info(path: str | Path, expect: str | None = None) -> CheckpointInfo:
    """The checked record of a checkpoint, without its weights."""
    path = Path(path)
    return _info(path, _load(path), expect)


def condition_specs(info: CheckpointInfo) -> list[Any]:
    """The ``ConditionSpec`` list a model checkpoint was trained with."""
    from eartalk.conditions.stack import ConditionSpec
    from eartalk.core.config import structure

    return [structure(c, ConditionSpec, source=f"{info.path} (conditions)") for c in info.conditions]


def load_model(path: str | Path, map_location: str | torch.device = "cpu", registry: Any = None, use_ema: bool = True) -> Any:
    """The :class:`~eartalk.core.engine.model.EarTalkModel` of a model checkpoint, in eval mode.

    Its condition stack is the one it was trained with (rebuilt from the recorded specs, so the
    plugins must be installed).
    """
    from eartalk.core.engine.model import build_model
    from eartalk.core.engine.presets import arch_from_dict

    info, state = read_checkpoint(path, expect="model", use_ema=use_ema)
    model = build_model(arch_from_dict(info.arch), condition_specs(info), registry=registry)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise InputError(f"{path}: weights do not match the recorded arch and conditions (are the same plugin versions installed?): {err}") from None
    return model.to(map_location).eval()


def load_vae_weights(vae: torch.nn.Module, path: str | Path) -> CheckpointInfo:
    """Load a VAE checkpoint's weights (and latent statistics) into ``vae``."""
    info, state = read_checkpoint(path, expect="vae")
    try:
        vae.load_state_dict(state)
    except RuntimeError as err:
        raise InputError(f"{path} does not match this model's VAE (another preset?): {err}") from None
    return info


def load_vae(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """The :class:`~eartalk.core.engine.vae.FrameVAE` of a VAE checkpoint, in eval mode."""
    from eartalk.core.engine.presets import arch_from_dict
    from eartalk.core.engine.vae import FrameVAE

    info = read_info(path, expect="vae")
    vae = FrameVAE.from_arch(arch_from_dict(info.arch))
    load_vae_weights(vae, path)
    return vae.to(map_location).eval()


def atomic_save(payload: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, flushed to disk, then renamed over it.

    A reader (or a process killed mid-write) sees the old file or the new one, never a part.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_checkpoint(path: str | Path, module: Any, kind: str = "model", conditions: Any = None, arch: Any = None) -> Path:
    """Write a model or VAE in the recipes' format, without Lightning (tests, exports).

    Args:
        path: destination ``.ckpt``.
        module: an ``EarTalkModel`` (kind ``model``) or a ``FrameVAE`` (kind ``vae``, give ``arch``).
        kind: ``model`` or ``vae``.
        conditions: the model's ``ConditionSpec`` list (default: each plugin with its options).
        arch: the ``ModelArch`` of a VAE (a model carries its own).
    """
    if kind == "model":
        if conditions is None:
            from eartalk.conditions.stack import ConditionSpec
            from eartalk.core.config import unstructure

            conditions = [ConditionSpec(n, unstructure(module.stack.plugin(n).options)) for n in module.stack.names]
        record = make_record("model", module.arch, module.vae, module.stack, conditions)
    else:
        record = make_record("vae", arch if arch is not None else module.arch, module)
    prefix = STATE_PREFIX[kind]
    state = {prefix + k: v.detach().cpu() for k, v in module.state_dict().items()}
    return atomic_save({"state_dict": state, "eartalk": record, "global_step": None}, path)


__all__ = [
    "FORMAT_VERSION",
    "CheckpointInfo",
    "atomic_save",
    "condition_specs",
    "load_model",
    "load_vae",
    "load_vae_weights",
    "make_record",
    "read_checkpoint",
    "read_info",
    "write_checkpoint",
]
