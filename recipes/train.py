"""``train`` recipe: the autoregressive model (backbone + MAR decoder + condition stack).

The frame VAE is frozen: ``model.vae_checkpoint`` names one trained by the ``vae`` recipe
(``random`` for tests only). Fine-tuning is the same recipe with ``init_from`` (a model checkpoint)
and optionally ``freeze``; the condition stack may differ from the checkpoint's (see
:func:`init_from_checkpoint` and docs/training.md): plugins it lacks start fresh, plugins it has
that the config dropped are left out, and ``finetune`` says how the loaded parts train.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import attrs
import torch

from eartalk.conditions.stack import ConditionSpec
from eartalk.core.config import structure, unstructure
from eartalk.core.errors import ConfigError, InputError
from eartalk.recipes.base import Recipe
from eartalk.recipes.common import RecipeModule, fit, preflight_conditions
from eartalk.recipes.config import (
    DataConfig,
    FocusConfig,
    ModelConfig,
    OptimConfig,
    TrainerConfig,
    arch_from,
    default_conditions,
    validate_common,
)

log = logging.getLogger(__name__)

try:  # Lightning is a hard dependency; the guard keeps `eartalk plugins` usable if it is broken.
    import lightning as L
except ImportError:  # pragma: no cover
    L = None  # type: ignore[assignment]

RANDOM_VAE = "random"
FINETUNE_BASE = ("train", "freeze", "lower_lr")
KEEP_WARN_BATCHES = 50  # training batches without a replay clip before finetune.keep warns


@attrs.frozen
class FinetuneConfig:
    """How the weights loaded by ``init_from`` train.

    Attributes:
        base: ``train`` (everything at ``optim.lr``), ``freeze`` (only the parts the checkpoint
            lacks train: new plugins' tokenizers and null tokens, their type-embedding rows) or
            ``lower_lr`` (loaded parts at ``optim.lr * base_lr_scale``, new parts at ``optim.lr``).
        base_lr_scale: learning-rate factor of the loaded parts with ``base: lower_lr``.
        reinit: plugins to start fresh although the checkpoint has them (needed when a plugin's
            options or ``signal_dim`` changed; without it that is an error).
        keep: weight of the keep loss (learning without forgetting, :meth:`EarTalkModel.keep_loss`):
            on the replay clips of each batch (clips whose data carry none of the new plugins:
            the model's new plugins null; or clips whose manifest metadata says ``replay: true``:
            their new plugins as given), the model's denoiser output is pulled toward the loaded
            checkpoint's (kept frozen beside it), so the old stack keeps its behaviour while the
            new plugins learn on the other clips. 0 (default): off.
    """

    base: str = "train"
    base_lr_scale: float = 0.1
    reinit: list[str] = attrs.field(factory=list)
    keep: float = 0.0


@attrs.frozen
class TrainConfig:
    """Config of the ``train`` recipe.

    Attributes:
        out_dir: run folder (checkpoints/, logs/, config.resolved.yaml, loss.png).
        seed: global seed.
        model: preset, arch overrides and the frozen VAE checkpoint (required; ``random`` for tests).
        conditions: the condition stack, in slot order.
        data: training clips.
        optim: optimiser.
        trainer: Lightning trainer arguments.
        init_from: model checkpoint to start from (fine-tuning); the stack may differ from its own.
        finetune: how the loaded weights train (freeze / lower learning rate / plugins to re-initialise).
        freeze: parameter-name prefixes to keep fixed (e.g. ``model.backbone.blocks.0``).
        resume: continue from the newest complete checkpoint in ``out_dir/checkpoints`` when there is one.
        focus: diffusion loss weighted up on the latent pixels of the eyes and mouth (:class:`FocusConfig`; off by default).
    """

    out_dir: str = "runs/train"
    seed: int = 0
    model: ModelConfig = ModelConfig()
    conditions: list[ConditionSpec] = attrs.field(factory=default_conditions)
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    trainer: TrainerConfig = TrainerConfig()
    init_from: str | None = None
    finetune: FinetuneConfig = FinetuneConfig()
    freeze: list[str] = attrs.field(factory=list)
    resume: bool = True
    focus: FocusConfig = FocusConfig()


def build_model(arch: Any, specs: list[ConditionSpec], vae_checkpoint: str | None = None) -> Any:
    """An :class:`EarTalkModel` for ``arch`` and condition ``specs`` (VAE weights from a checkpoint)."""
    from eartalk.core.engine import model as engine

    model = engine.build_model(arch, specs)
    if vae_checkpoint and vae_checkpoint != RANDOM_VAE:
        from eartalk.core.engine.checkpoint import load_vae_weights

        load_vae_weights(model.vae, vae_checkpoint)
    return model


def stack_order(config_specs: list[ConditionSpec], checkpoint_names: list[str]) -> list[ConditionSpec]:
    """The config's specs in slot order for a fine-tune: the checkpoint's plugins first, in their
    old order (their slots keep their places), then the new ones in config order."""
    by_name = {s.name: s for s in config_specs}
    kept = [by_name[n] for n in checkpoint_names if n in by_name]
    new = [s for s in config_specs if s.name not in checkpoint_names]
    return kept + new


@attrs.frozen
class InitReport:
    """What :func:`init_from_checkpoint` did.

    Attributes:
        loaded: names of the tensors taken from the checkpoint.
        fresh: plugins initialised fresh (new to the stack, or re-initialised).
        dropped: plugins of the checkpoint not in this stack.
        kept: plugins whose weights (tokenizer, null token, type-embedding row) came from the checkpoint.
    """

    loaded: list[str]
    fresh: list[str]
    dropped: list[str]
    kept: list[str]


def init_from_checkpoint(model: Any, path: str | Path, reinit: list[str] | tuple[str, ...] = ()) -> InitReport:
    """Load a model checkpoint into ``model``, whose condition stack may differ from the checkpoint's.

    Everything outside the stack must match (same preset and arch sizes). Plugins both have keep
    their tokenizer and null token, and their row of the stack's type embedding moves to their
    row in this stack; plugins only ``model`` has (or those in ``reinit``) keep their fresh
    initialisation. A plugin both have whose options or ``signal_dim`` differ is an error unless
    it is in ``reinit``.

    Raises:
        InputError: not a model checkpoint, another arch, or a changed plugin not in ``reinit``.
    """
    from eartalk.core.config import unstructure as plain
    from eartalk.core.engine.checkpoint import read_checkpoint

    info, state = read_checkpoint(path, expect="model")
    stack = model.stack
    old_plugins = {p["name"]: p for p in info.plugins}
    old_names = [p["name"] for p in info.plugins]
    unknown = sorted(set(reinit) - set(stack.names))
    if unknown:
        raise ConfigError(f"finetune.reinit: {unknown} not in this config's conditions {stack.names}")
    changed = []
    for name in stack.names:
        if name not in old_plugins or name in reinit:
            continue
        plugin, old = stack.plugin(name), old_plugins[name]
        now = {"signal_dim": int(plugin.signal_dim), "slots": int(plugin.slots), "options": plain(plugin.options)}
        then = {k: old.get(k) for k in now}
        if now != then:
            diff = ", ".join(f"{k}: {then[k]!r} -> {now[k]!r}" for k in now if now[k] != then[k])
            changed.append(f"{name!r} ({diff})")
    if changed:
        raise InputError(
            f"init_from: {path} was trained with a different version of condition(s) {'; '.join(changed)}; its "
            "tokenizer cannot be reused as is. Restore the old options, or list the plugin under finetune.reinit "
            "to train it from a fresh initialisation"
        )
    fresh = [n for n in stack.names if n not in old_plugins or n in reinit]
    own = model.state_dict()
    usable: dict[str, torch.Tensor] = {}
    mismatched = []
    for key, value in state.items():
        if key.startswith("stack."):
            continue
        if key in own and own[key].shape == value.shape:
            usable[key] = value
        else:
            mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(own[key].shape) if key in own else 'absent'}")
    if mismatched:
        raise InputError(
            f"init_from: {path} has another architecture than this config (preset {info.arch.get('width')}-wide "
            f"vs {model.arch.width}-wide; e.g. {mismatched[0]}); use the preset and model.arch it was trained with"
        )
    for name in stack.names:
        if name in fresh:
            continue
        prefix = f"stack.plugins.{name}."
        for key, value in state.items():
            if key.startswith(prefix) and key in own and own[key].shape == value.shape:
                usable[key] = value
    type_embedding = model.stack.type_embedding.detach().clone()  # (P, D), fresh rows for new plugins
    old_types = state.get("stack.type_embedding")
    kept = [n for n in stack.names if n not in fresh]
    for name in kept:
        type_embedding[stack.names.index(name)] = old_types[old_names.index(name)]
    usable["stack.type_embedding"] = type_embedding
    model.load_state_dict(usable, strict=False)
    dropped = [n for n in old_names if n not in stack.names]
    log.info(
        "init_from %s: %d tensors loaded; fresh plugins: %s; dropped plugins: %s",
        path, len(usable), fresh or "none", dropped or "none",
    )
    return InitReport(sorted(usable), fresh, dropped, kept)


if L is not None:

    class EarTalkModule(RecipeModule):
        """Lightning wrapper: teacher-forced training of the AR model with the frozen VAE
        (the model keeps its VAE frozen and in eval mode itself)."""

        def __init__(self, config: dict[str, Any]) -> None:
            super().__init__()
            self.save_hyperparameters({"config": config})
            self.cfg = structure(config, TrainConfig)
            self.arch = arch_from(self.cfg.model)
            specs = list(self.cfg.conditions)
            self.init_report: InitReport | None = None
            if self.cfg.init_from:
                from eartalk.core.engine.checkpoint import read_info

                specs = stack_order(specs, read_info(self.cfg.init_from, expect="model").condition_names)
            self.specs = specs
            self.model = build_model(self.arch, specs, self.cfg.model.vae_checkpoint)
            self._base_params: set[str] = set()
            self._teacher: list[Any] = []  # a list: the frozen checkpoint is no submodule (not saved, not trained)
            self._replay_seen, self._keep_batches = 0, 0  # replay clips seen by the keep loss (warned if none)
            if self.cfg.init_from:
                self.init_report = init_from_checkpoint(self.model, self.cfg.init_from, self.cfg.finetune.reinit)
                self._setup_finetune(self.init_report)
                if self.cfg.finetune.keep > 0:
                    teacher = load_trained(self.cfg.init_from)
                    self._teacher.append(teacher.requires_grad_(False).eval())
            for name, param in self.named_parameters():
                if any(name.startswith(prefix) for prefix in self.cfg.freeze):
                    param.requires_grad_(False)

        def _setup_finetune(self, report: InitReport) -> None:
            """Freeze or slow down what came from the checkpoint (``finetune.base``)."""
            mode = self.cfg.finetune.base
            fresh_prefixes = tuple(f"model.stack.plugins.{n}." for n in report.fresh)
            for name, param in self.named_parameters():
                if name == "model.stack.type_embedding" or name.startswith(fresh_prefixes) or not param.requires_grad:
                    continue
                self._base_params.add(name)
                if mode == "freeze":
                    param.requires_grad_(False)
            if mode == "freeze":
                if not report.fresh:
                    raise ConfigError(
                        "finetune.base=freeze: the stack adds no new plugin, so nothing would train; "
                        "use finetune.base=lower_lr or train"
                    )
                # Only the new plugins' rows of the type embedding learn; the old rows stay as loaded.
                rows = torch.zeros(len(self.model.stack.names), 1)
                for name in report.fresh:
                    rows[self.model.stack.names.index(name)] = 1.0
                self.model.stack.type_embedding.register_hook(lambda grad: grad * rows.to(grad))

        def on_fit_start(self) -> None:
            for teacher in self._teacher:  # not a submodule: Lightning does not move it
                teacher.to(self.device)

        def lr_scale(self, name: str) -> float:
            if self.cfg.finetune.base == "lower_lr" and name in self._base_params:
                return float(self.cfg.finetune.base_lr_scale)
            return 1.0

        def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
            if self.cfg.focus.weight > 0:
                batch = {**batch, "focus": self.cfg.focus.pixel_weights(batch)}
            if not self._teacher:
                return self.model.loss(batch)
            tokens, ref_tokens = self.model.batch_tokens(batch)  # encoded once for both losses
            batch = {**batch, "tokens": tokens, "reference_tokens": ref_tokens}
            out = self.model.loss(batch)
            teacher = self._teacher[0]
            keep = self.model.keep_loss(batch, teacher)
            if self.training and self._replay_seen == 0:
                self._replay_seen += int(self.model.replay_clips(batch, set(teacher.stack.names)).sum())
                self._keep_batches += 1
                if self._keep_batches == KEEP_WARN_BATCHES and self._replay_seen == 0:
                    log.warning("finetune.keep: no replay clip in the first %d batches (every clip carries the new "
                                "plugin(s) %s), so the keep loss is 0; store their signal as absent (NaN rows) on a "
                                "share of plain clips, or flag such clips replay: true in their manifest metadata", KEEP_WARN_BATCHES,
                                sorted(set(self.model.stack.names) - set(teacher.stack.names)))
            return {**out, "loss": out["loss"] + self.cfg.finetune.keep * keep, "diffusion": out.get("diffusion", out["loss"]),
                    "keep": keep}

        def checkpoint_record(self) -> dict[str, Any]:
            from eartalk.core.engine.checkpoint import make_record

            return make_record("model", self.arch, self.model.vae, self.model.stack, self.specs)


def load_trained(path: str | Path, map_location: str = "cpu", use_ema: bool = True) -> Any:
    """The :class:`EarTalkModel` saved in a ``train`` recipe checkpoint (eval mode; its EMA
    weights where it has them, unless ``use_ema`` is False).

    The same as :func:`eartalk.core.engine.checkpoint.load_model`.
    """
    from eartalk.core.engine.checkpoint import load_model

    return load_model(path, map_location=map_location, use_ema=use_ema)


class TrainRecipe(Recipe):
    name = "train"
    description = "train the autoregressive model (backbone + MAR decoder + conditions) with Lightning"
    Config = TrainConfig

    @classmethod
    def validate(cls, config: TrainConfig, source: str) -> None:
        # Checkpoint files are checked when the run starts: a config may name one a previous
        # step of the pipeline has not written yet.
        validate_common(config, source)
        config.focus.validate(source)

    def run(self, config: TrainConfig, overrides: list[str] | None = None, on_start: Any = None) -> Path:
        check_inputs(config)
        preflight_conditions(config.conditions)  # a broken plugin dependency fails now, not minutes in
        return fit(config, lambda: EarTalkModule(unstructure(config)), lambda m: m.model.stack, "last.ckpt", on_start,
                   extras=config.focus.extras)


def check_inputs(config: TrainConfig) -> None:
    """Refuse a run whose checkpoint inputs are missing, before anything is built."""
    vae = config.model.vae_checkpoint
    if vae is None or str(vae).strip() == "":
        raise ConfigError(
            "model.vae_checkpoint is not set: the train recipe needs a frame VAE trained by the `vae` recipe "
            "(e.g. model.vae_checkpoint=runs/vae_tiny/checkpoints/vae.ckpt after `eartalk train "
            f"recipes/configs/vae_tiny_train.yaml`); `{RANDOM_VAE}` trains on an untrained VAE (tests only)"
        )
    if vae != RANDOM_VAE and not Path(vae).is_file():
        raise ConfigError(
            f"model.vae_checkpoint: {vae} does not exist; train the VAE first (`eartalk train recipes/configs/vae_*.yaml`) "
            f"or point at its checkpoints/vae.ckpt"
        )
    if config.init_from and not Path(config.init_from).is_file():
        raise ConfigError(f"init_from: {config.init_from} does not exist; give a model checkpoint written by `eartalk train`")
    if config.finetune.base not in FINETUNE_BASE:
        raise ConfigError(f"finetune.base: {config.finetune.base!r} is not one of {', '.join(FINETUNE_BASE)}")
    if not 0.0 < config.finetune.base_lr_scale <= 1.0:
        raise ConfigError(f"finetune.base_lr_scale must be in (0, 1], got {config.finetune.base_lr_scale}")
    if not config.finetune.keep >= 0.0:
        raise ConfigError(f"finetune.keep must be >= 0 (0: off), got {config.finetune.keep}")
    if config.finetune.keep > 0 and not config.init_from:
        raise ConfigError("finetune.keep keeps the behaviour of the init_from checkpoint: set init_from, or keep: 0")
