"""Exponential moving average of the trainable weights, as a Lightning callback.

``trainer.ema_decay: 0.9999`` turns it on. After every optimiser step each trainable parameter's
shadow moves towards it: ``ema = d * ema + (1 - d) * w`` with ``d = min(decay, (1 + n) / (10 + n))``
at update n (the usual warm-up, so a short run's average is not dominated by the random init).
The shadow is kept in float32 on the parameter's device, whatever the training precision.

Checkpoints: the shadow is stored as ``checkpoint["ema_state_dict"]`` (keys as in
``checkpoint["state_dict"]``, trainable parameters only) with ``checkpoint["ema_decay"]`` and
``checkpoint["ema_updates"]``; a resumed run continues the same average. Loaders use the EMA
weights for sampling by default (:func:`apply_ema`, ``use_ema=False`` to get the raw weights).

FSDP is not supported (the shards would need gathering at save time); with FSDP the callback
refuses to start with a clear error. DDP keeps one identical average per rank.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from eartalk.core.errors import ConfigError

log = logging.getLogger(__name__)

EMA_KEY = "ema_state_dict"

try:
    import lightning as L
except ImportError:  # pragma: no cover
    L = None  # type: ignore[assignment]


def check_ema_decay(decay: float, what: str) -> None:
    """Refuse an EMA decay outside ``[0, 1)`` (0 = off; NaN too), naming the option ``what``."""
    if not 0.0 <= decay < 1.0:
        raise ConfigError(f"{what} must be in [0, 1) (0 = off), got {decay}")


def _unwrap_name(name: str) -> str:
    """Parameter name without activation-checkpointing wrapper prefixes (as in ``state_dict`` keys)."""
    return name.replace("._checkpoint_wrapped_module", "").replace("_checkpoint_wrapped_module.", "")


def apply_ema(state_dict: Mapping[str, torch.Tensor], checkpoint: Mapping[str, Any], use_ema: bool = True) -> dict[str, torch.Tensor]:
    """``state_dict`` with the checkpoint's EMA weights in place of the raw ones (when stored and ``use_ema``)."""
    out = dict(state_dict)
    ema = checkpoint.get(EMA_KEY) if use_ema else None
    if not ema:
        return out
    for key, value in ema.items():
        if key in out:
            out[key] = value.to(out[key].dtype)
    return out


if L is not None:

    class EMA(L.Callback):
        """EMA of the trainable parameters (see the module docstring).

        Args:
            decay: the target decay (``0 < decay < 1``).
        """

        def __init__(self, decay: float) -> None:
            if not 0.0 < decay < 1.0:
                raise ConfigError(f"trainer.ema_decay must be in (0, 1) (0 turns EMA off), got {decay}")
            self.decay = float(decay)
            self.updates = 0
            self.shadow: dict[str, torch.Tensor] = {}
            self._loaded: dict[str, torch.Tensor] | None = None

        def _params(self, pl_module: Any) -> dict[str, torch.nn.Parameter]:
            return {_unwrap_name(n): p for n, p in pl_module.named_parameters() if p.requires_grad}

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            from lightning.pytorch.strategies import FSDPStrategy

            if isinstance(trainer.strategy, FSDPStrategy):
                raise ConfigError("trainer.ema_decay is not supported with trainer.strategy=fsdp; use ddp or set ema_decay=0")
            params = self._params(pl_module)
            if self._loaded is not None:
                missing = sorted(set(params) - set(self._loaded))
                if missing:
                    log.warning("EMA: %d parameter(s) not in the checkpoint's average start from their weights", len(missing))
                self.shadow = {
                    n: (self._loaded[n] if n in self._loaded else p.detach()).to(p.device, torch.float32).clone()
                    for n, p in params.items()
                }
                self._loaded = None
            elif not self.shadow:
                self.shadow = {n: p.detach().to(torch.float32).clone() for n, p in params.items()}

        @torch.no_grad()
        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            # One update per optimiser step (gradient accumulation: only when the step happened).
            if trainer.global_step <= self.updates:
                return
            self.updates = trainer.global_step
            d = min(self.decay, (1 + self.updates) / (10 + self.updates))
            for name, param in self._params(pl_module).items():
                shadow = self.shadow.get(name)
                if shadow is None:
                    self.shadow[name] = param.detach().to(torch.float32).clone()
                    continue
                shadow.mul_(d).add_(param.detach().to(torch.float32), alpha=1 - d)

        def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
            checkpoint[EMA_KEY] = {n: t.detach().cpu().clone() for n, t in self.shadow.items()}
            checkpoint["ema_decay"] = self.decay
            checkpoint["ema_updates"] = self.updates

        def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
            if checkpoint.get(EMA_KEY):
                self._loaded = dict(checkpoint[EMA_KEY])
                self.updates = int(checkpoint.get("ema_updates", trainer.global_step if trainer else 0))
