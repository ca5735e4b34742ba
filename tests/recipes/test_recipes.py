"""Lightning recipes on a tiny synthetic dataset: losses fall, runs resume, NaN stops cleanly,
fine-tuning starts from a checkpoint, and `generate` writes a controlled video."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eartalk.core.config import structure, unstructure
from eartalk.core.errors import ConfigError, EartalkError, InputError
from eartalk.recipes.common import read_metrics
from eartalk.recipes.train import TrainConfig, TrainRecipe, load_trained
from eartalk.recipes.vae import VAEConfig, VAERecipe

CONDITIONS = [{"name": "audio"}, {"name": "head_pose"}, {"name": "blink"}, {"name": "emotion"}]


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory) -> Path:
    from eartalk.core.data.synth import synthesize_dataset

    return synthesize_dataset(tmp_path_factory.mktemp("synth") / "data", clips=3, seconds=2.0, resolution=64, seed=3)


def trainer_cfg(steps: int, every: int | None = None) -> dict:
    every = every or steps
    return {"max_steps": steps, "val_every_n_steps": every, "checkpoint_every_n_steps": every,
            "log_every_n_steps": 1, "progress_bar": False, "accelerator": "cpu"}


def losses(run: Path, key: str = "train/loss") -> list[float]:
    return [v for _, v in read_metrics(run).get(key, [])]


@pytest.fixture(scope="module")
def vae_run(synth_data: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vae")
    cfg = structure({"out_dir": str(out), "data": {"root": str(synth_data), "clip_frames": 2, "batch_size": 2},
                     "optim": {"lr": 3e-3, "warmup_steps": 3}, "trainer": trainer_cfg(30, every=15)}, VAEConfig)
    VAERecipe().run(cfg)
    return out


def test_vae_recipe_learns_and_fits_latent_stats(vae_run: Path) -> None:
    curve = losses(vae_run)
    assert len(curve) >= 25
    assert sum(curve[-5:]) / 5 < 0.6 * sum(curve[:3]) / 3, f"VAE loss did not fall: {curve[:5]} -> {curve[-10:]}"
    stds = {}
    for name in ("vae.ckpt", "last.ckpt", "step000015.ckpt"):
        ckpt = torch.load(vae_run / "checkpoints" / name, map_location="cpu", weights_only=False)
        std = ckpt["state_dict"]["vae.latent_std"]
        assert not torch.allclose(std, torch.ones_like(std)), f"{name}: latent statistics were fitted at its save"
        assert ckpt["eartalk"]["kind"] == "vae" and ckpt["eartalk"]["latent_stats"]["std"] == std.tolist()
        stds[name] = std
    assert not torch.equal(stds["step000015.ckpt"], stds["vae.ckpt"]), "each save fits the stats of its own weights"
    assert (vae_run / "config.resolved.yaml").is_file() and (vae_run / "loss.png").is_file()


def train_config(out: Path, data: Path, vae_ckpt: Path, steps: int, **extra) -> TrainConfig:
    raw = {"out_dir": str(out), "model": {"preset": "tiny", "vae_checkpoint": str(vae_ckpt)},
           "conditions": CONDITIONS, "data": {"root": str(data), "clip_frames": 6, "batch_size": 2},
           "optim": {"lr": 2e-3, "warmup_steps": 5}, "trainer": trainer_cfg(steps), **extra}
    raw["model"]["arch"] = {"window": 3, "period": 6}
    return structure(raw, TrainConfig)


@pytest.fixture(scope="module")
def model_run(synth_data: Path, vae_run: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model")
    TrainRecipe().run(train_config(out, synth_data, vae_run / "checkpoints" / "vae.ckpt", 60))
    return out


def test_train_recipe_loss_falls(model_run: Path) -> None:
    # The tiny preset has the mean path: train/loss = diffusion + mean_weight * mean_mse, and the
    # recipe logs both terms. Its regression needs far more than 60 steps (docs/study.md), so the
    # fall is asserted on the diffusion term; the total is logged as their sum.
    total, curve, mean = losses(model_run), losses(model_run, "train/diffusion"), losses(model_run, "train/mean_mse")
    assert len(curve) >= 50 and len(mean) == len(curve) == len(total)
    assert all(t == pytest.approx(d + m, rel=1e-4) for t, d, m in zip(total, curve, mean, strict=True))
    assert sum(curve[-10:]) / 10 < 0.8 * sum(curve[:5]) / 5, f"loss did not fall: {curve[:5]} -> {curve[-10:]}"
    model = load_trained(model_run / "checkpoints" / "last.ckpt")
    assert model.stack.names == [c["name"] for c in CONDITIONS]
    assert not model.training


def test_resume_continues_from_last_checkpoint(synth_data: Path, vae_run: Path, model_run: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "resumed"
    shutil.copytree(model_run, out)
    cfg = train_config(out, synth_data, vae_run / "checkpoints" / "vae.ckpt", 70)
    TrainRecipe().run(cfg)
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 70
    steps = [s for s, _ in read_metrics(out)["train/loss"]]
    assert max(steps) >= 65 and len([s for s in steps if s >= 60]) <= 12, "only the 10 new steps were trained"


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoints(synth_data: Path, vae_run: Path, tmp_path: Path, monkeypatch) -> None:
    from eartalk.core.engine.model import EarTalkModel

    real_loss = EarTalkModel.loss
    calls = {"n": 0}

    def flaky(self, batch):
        calls["n"] += 1
        out = real_loss(self, batch)
        if calls["n"] > 4:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(EarTalkModel, "loss", flaky)
    cfg = train_config(tmp_path / "nan", synth_data, vae_run / "checkpoints" / "vae.ckpt", 10)
    cfg = structure({**unstructure(cfg),
                     "trainer": {**trainer_cfg(10, every=2)}}, TrainConfig)
    with pytest.raises(EartalkError, match=r"(?s)loss became nan at step \d+.*checkpoints"):
        TrainRecipe().run(cfg)
    assert list((tmp_path / "nan" / "checkpoints").glob("*.ckpt")), "checkpoints written before the NaN are kept"


def test_finetune_from_checkpoint_with_frozen_parts(synth_data: Path, vae_run: Path, model_run: Path, tmp_path: Path) -> None:
    base = load_trained(model_run / "checkpoints" / "last.ckpt")
    cfg = train_config(tmp_path / "ft", synth_data, vae_run / "checkpoints" / "vae.ckpt", 5,
                       init_from=str(model_run / "checkpoints" / "last.ckpt"), freeze=["model.backbone.blocks.0"])
    TrainRecipe().run(cfg)
    tuned = load_trained(tmp_path / "ft" / "checkpoints" / "last.ckpt")
    frozen = dict(base.backbone.blocks[0].named_parameters())
    for name, param in tuned.backbone.blocks[0].named_parameters():
        torch.testing.assert_close(param, frozen[name], msg=f"frozen {name} changed")
    moved = any(not torch.equal(a, b) for a, b in zip(tuned.decoder.parameters(), base.decoder.parameters(), strict=True))
    assert moved, "unfrozen parts were trained from the checkpoint's values"
    with pytest.raises(ConfigError, match="does not exist"):
        TrainRecipe().run(train_config(tmp_path / "x", synth_data, tmp_path / "missing.ckpt", 5))


def test_train_refuses_a_missing_vae_unless_random(synth_data: Path, tmp_path: Path) -> None:
    for value in (None, ""):
        cfg = train_config(tmp_path / "x", synth_data, "random", 1)
        cfg = structure({**unstructure(cfg), "model": {**unstructure(cfg.model), "vae_checkpoint": value}}, TrainConfig)
        with pytest.raises(ConfigError, match=r"(?s)model.vae_checkpoint is not set.*vae_tiny_train.yaml.*random"):
            TrainRecipe().run(cfg)
    assert not (tmp_path / "x").exists(), "refused before anything is written"


def test_wrong_checkpoint_kinds_are_named(vae_run: Path, model_run: Path, synth_data: Path, tmp_path: Path) -> None:
    from eartalk.recipes.generate import generate_video

    vae_ckpt = vae_run / "checkpoints" / "vae.ckpt"
    with pytest.raises(InputError, match=r"(?s)is a frame-VAE checkpoint.*the `train` recipe writes it as runs/<run>/checkpoints/last\.ckpt"):
        generate_video(vae_ckpt, "portrait.png", None, tmp_path / "x.mp4", num_frames=2)
    model_ckpt = model_run / "checkpoints" / "last.ckpt"
    with pytest.raises(InputError, match=r"(?s)is an eartalk model checkpoint.*expected a frame-VAE checkpoint"):
        TrainRecipe().run(train_config(tmp_path / "y", synth_data, model_ckpt, 1))
    with pytest.raises(InputError, match=r"is a frame-VAE checkpoint"):
        TrainRecipe().run(train_config(tmp_path / "z", synth_data, vae_ckpt, 1, init_from=str(vae_ckpt)))


def test_finetune_with_a_changed_stack(synth_data: Path, vae_run: Path, model_run: Path, tmp_path: Path, real_dir: Path,
                                       landmarker_path: Path, monkeypatch) -> None:
    """init_from a checkpoint whose stack lacks `gaze` and has `emotion`, which the new config drops:
    the old plugins and their type-embedding rows load and (frozen) stay; gaze starts fresh and learns;
    the old slots keep their offsets; generate refuses `emotion` afterwards, naming what it learnt."""
    from eartalk.recipes.generate import generate_video

    base = load_trained(model_run / "checkpoints" / "last.ckpt")
    new_conditions = [{"name": "gaze"}, {"name": "audio"}, {"name": "head_pose"}, {"name": "blink"}]
    cfg = train_config(tmp_path / "ft", synth_data, vae_run / "checkpoints" / "vae.ckpt", 4,
                       init_from=str(model_run / "checkpoints" / "last.ckpt"), finetune={"base": "freeze"})
    cfg = structure({**unstructure(cfg), "conditions": new_conditions}, TrainConfig)
    TrainRecipe().run(cfg)
    tuned = load_trained(tmp_path / "ft" / "checkpoints" / "last.ckpt")
    assert tuned.stack.names == ["audio", "head_pose", "blink", "gaze"], "old plugins keep their order, new ones follow"
    old_layout = {s.name: (s.offset, s.slots) for s in base.stack.layout}
    for span in tuned.stack.layout[:3]:
        assert (span.offset, span.slots) == old_layout[span.name], f"{span.name} moved"
    for name in ("audio", "head_pose", "blink"):
        old = dict(base.stack.plugin(name).named_parameters())
        for key, value in tuned.stack.plugin(name).named_parameters():
            assert torch.equal(value, old[key]), f"{name}.{key} changed although frozen"
        assert torch.equal(tuned.stack.type_embedding[tuned.stack.names.index(name)],
                           base.stack.type_embedding[base.stack.names.index(name)]), f"type embedding of {name} moved"
    for key, value in tuned.backbone.named_parameters():
        assert torch.equal(value, dict(base.backbone.named_parameters())[key]), f"frozen backbone {key} changed"
    import lightning as L

    from eartalk.recipes.train import EarTalkModule

    L.seed_everything(cfg.seed, verbose=False)  # the recipe seeds, then builds: the same fresh gaze init
    fresh = EarTalkModule(unstructure(cfg)).model.stack.plugin("gaze")
    moved = [k for k, v in tuned.stack.plugin("gaze").named_parameters() if not torch.equal(v, dict(fresh.named_parameters())[k])]
    assert moved, "the new plugin's tokenizer / null token trained"
    ckpt = torch.load(tmp_path / "ft" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["eartalk"]["conditions"][-1]["name"] == "gaze"
    assert [c["name"] for c in ckpt["eartalk"]["conditions"]] == tuned.stack.names, "the checkpoint records its stack"
    monkeypatch.setenv("EARTALK_FACE_LANDMARKER", str(landmarker_path))
    with pytest.raises(InputError, match=r"never learnt the control 'emotion'.*audio, head_pose, blink, gaze"):
        generate_video(tmp_path / "ft" / "checkpoints" / "last.ckpt", real_dir / "image" / "LivePortrait__s42.jpg", None,
                       tmp_path / "g.mp4", controls=["emotion=happy"], num_frames=2)


def test_finetune_new_plugin_trains_and_lower_lr_groups(synth_data: Path, vae_run: Path, model_run: Path, tmp_path: Path) -> None:
    from eartalk.recipes.train import EarTalkModule

    raw = unstructure(train_config(tmp_path / "m", synth_data, vae_run / "checkpoints" / "vae.ckpt", 4,
                                   init_from=str(model_run / "checkpoints" / "last.ckpt"),
                                   finetune={"base": "lower_lr", "base_lr_scale": 0.1}))
    raw["conditions"] = [*CONDITIONS, {"name": "gaze"}]
    module = EarTalkModule(raw)
    assert module.init_report.fresh == ["gaze"] and module.init_report.dropped == []
    opt = module.configure_optimizers()["optimizer"]
    lr_of = {id(p): g["initial_lr"] for g in opt.param_groups for p in g["params"]}  # before the warm-up factor
    params = dict(module.named_parameters())
    assert lr_of[id(params["model.backbone.latent_in.weight"])] == pytest.approx(2e-4)
    gaze = [n for n in params if n.startswith("model.stack.plugins.gaze.")]
    assert gaze and all(lr_of[id(params[n])] == pytest.approx(2e-3) for n in gaze)
    assert lr_of[id(params["model.stack.type_embedding"])] == pytest.approx(2e-3)


def test_changed_plugin_is_an_error_unless_reinitialised(synth_data: Path, vae_run: Path, model_run: Path, tmp_path: Path) -> None:
    from eartalk.recipes.train import EarTalkModule

    raw = unstructure(train_config(tmp_path / "m", synth_data, vae_run / "checkpoints" / "vae.ckpt", 4,
                                   init_from=str(model_run / "checkpoints" / "last.ckpt")))
    raw["conditions"] = [{"name": "audio", "options": {"n_mels": 24}}, *CONDITIONS[1:]]
    with pytest.raises(InputError, match=r"(?s)different version of condition\(s\) 'audio'.*n_mels.*finetune.reinit"):
        EarTalkModule(raw)
    base = load_trained(model_run / "checkpoints" / "last.ckpt")
    module = EarTalkModule({**raw, "finetune": {"reinit": ["audio"]}})
    assert module.init_report.fresh == ["audio"]
    assert torch.equal(module.model.stack.plugin("blink").null_token, base.stack.plugin("blink").null_token)
    with pytest.raises(ConfigError, match="finetune.reinit"):
        EarTalkModule({**raw, "finetune": {"reinit": ["gase"]}})


def test_generate_cli_writes_controlled_video(model_run: Path, real_dir: Path, landmarker_path: Path, tmp_path: Path, monkeypatch) -> None:
    from eartalk.core.media.io import read_video
    from eartalk.recipes.generate import generate_video

    monkeypatch.setenv("EARTALK_FACE_LANDMARKER", str(landmarker_path))
    ckpt = model_run / "checkpoints" / "last.ckpt"
    out = generate_video(
        ckpt, real_dir / "image" / "LivePortrait__s42.jpg", real_dir / "audio" / "dreamtalk__spanish1.wav",
        tmp_path / "out.mp4", controls=["emotion=happy@0:4", "blink=off@2:6", "head_pose=10,0,0,0,0,-50@4:"],
        num_frames=8, progress=False,
    )
    clip = read_video(out)
    assert clip.frames.shape[0] == 8 and clip.frames.shape[-1] == 64
    assert clip.audio is not None and abs(clip.audio.shape[0] - 8 * 640) <= 640
    with pytest.raises(EartalkError, match=r"never learnt the control 'gase'; it was trained with audio, head_pose, blink, emotion"):
        generate_video(ckpt, real_dir / "image" / "LivePortrait__s42.jpg", None, tmp_path / "x.mp4", controls=["gase=1"], num_frames=2)
    gray = tmp_path / "gray.png"
    from PIL import Image

    Image.new("RGB", (128, 128), (128, 128, 128)).save(gray)
    with pytest.raises(InputError, match="gray.png"):
        generate_video(ckpt, gray, None, tmp_path / "y.mp4", num_frames=2)
    assert not (tmp_path / "y.mp4").exists(), "nothing is written when the input is bad"


def test_cfg_separate_parsing() -> None:
    from eartalk.recipes.commands import parse_scales

    assert parse_scales(["brightness=2", " emotion = 0.5"]) == {"brightness": 2.0, "emotion": 0.5}
    for bad in ("brightness", "brightness=x", "=2"):
        with pytest.raises(ConfigError, match=f"--cfg-separate '{bad}': expected NAME=SCALE"):
            parse_scales([bad])


def test_control_parsing() -> None:
    from eartalk.recipes.generate import parse_control

    edit = parse_control("emotion=happy@25:100")
    assert (edit.name, edit.value, edit.start, edit.stop) == ("emotion", "happy", 25, 100)
    assert parse_control("gaze=0.1,0,-0.2,0@10:").value == [0.1, 0.0, -0.2, 0.0]
    assert parse_control("blink=off").value is None
    assert parse_control('emotion={"emotion": "sad", "intensity": 3}').value == {"emotion": "sad", "intensity": 3}
    with pytest.raises(InputError, match="NAME=VALUE"):
        parse_control("emotion")
    with pytest.raises(InputError, match="does not exist"):
        parse_control("head_pose=missing.csv")
    with pytest.raises(InputError, match="empty frame range"):
        parse_control("blink=off@5:5")


def test_train_command_end_to_end(synth_data: Path, vae_run: Path, tmp_path: Path) -> None:
    cfg = Path(__file__).resolve().parents[2] / "recipes" / "configs" / "eartalk_tiny_train.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "eartalk", "train", str(cfg), f"out_dir={tmp_path / 'cli'}", f"data.root={synth_data}",
         f"model.vae_checkpoint={vae_run / 'checkpoints' / 'vae.ckpt'}", "trainer.max_steps=3", "trainer.progress_bar=false",
         "trainer.accelerator=cpu", "data.batch_size=2", "data.clip_frames=6", "model.arch.window=3", "model.arch.period=6",
         "trainer.val_every_n_steps=3", "trainer.checkpoint_every_n_steps=3"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "cli" / "checkpoints" / "last.ckpt").is_file()
    resolved = (tmp_path / "cli" / "config.resolved.yaml").read_text()
    assert "max_steps: 3" in resolved and str(synth_data) in resolved


def test_progress_bar_label_has_no_negative_epoch_count(tmp_path: Path) -> None:
    """Step-bounded runs have max_epochs=-1; the stock rich label read "Epoch 3/-2"."""
    import attrs

    from eartalk.recipes.common import build_trainer
    from eartalk.recipes.config import TrainerConfig

    cfg = attrs.evolve(TrainerConfig(), max_steps=7, progress_bar=True)
    trainer = build_trainer(cfg, tmp_path)
    bar = trainer.progress_bar_callback
    assert bar is not None
    bar._trainer = trainer  # set by Lightning at fit start
    label = bar._get_train_description(3)
    assert label == "Epoch 3 (step budget 7)" and "/-" not in label


def _keep_gap(model, base, batches) -> float:
    """The keep loss of ``model`` against ``base`` over fixed batches (eval mode, fixed seed)."""
    torch.manual_seed(0)
    with torch.no_grad():
        return float(sum(model.keep_loss(b, base) for b in batches) / len(batches))


def test_finetune_keep_loss_keeps_the_old_stack(synth_data: Path, vae_run: Path, model_run: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """finetune.keep: adding a plugin and training everything at a high learning rate moves the old
    stack's output away from the checkpoint's; the keep loss holds it closer (same steps and seed).
    The new plugin (`expression`) is absent from these clips (no stored face track, and no
    landmarker to compute one: CI sets one, so it is unset here), so every clip is a replay clip."""
    from eartalk.core.media.face import ENV_VAR
    from eartalk.recipes.common import make_datamodule
    from eartalk.recipes.train import EarTalkModule

    monkeypatch.delenv(ENV_VAR, raising=False)

    start = str(model_run / "checkpoints" / "last.ckpt")
    base = load_trained(start)
    runs = {}
    for keep in (0.0, 4.0):
        raw = unstructure(train_config(tmp_path / f"k{keep}", synth_data, vae_run / "checkpoints" / "vae.ckpt", 25,
                                       init_from=start, finetune={"base": "train", "keep": keep}))
        raw["conditions"] = [*CONDITIONS, {"name": "expression"}]
        raw["optim"] = {"lr": 1e-2, "warmup_steps": 2}
        if keep:
            module = EarTalkModule(raw)
            assert module._teacher and not any("teacher" in k for k in module.state_dict()), "the teacher is not saved"
        TrainRecipe().run(structure(raw, TrainConfig))
        runs[keep] = load_trained(tmp_path / f"k{keep}" / "checkpoints" / "last.ckpt")
    assert "train/keep" in read_metrics(tmp_path / "k4.0"), "the keep loss is logged"
    cfg = train_config(tmp_path / "dm", synth_data, vae_run / "checkpoints" / "vae.ckpt", 1)
    dm = make_datamodule(cfg, runs[0.0].stack)
    dm.setup("fit")
    batches = [b for b, _ in zip(dm.train_dataloader(), range(3), strict=False)]
    assert all(runs[0.0].replay_clips(b, base.stack.names).all() for b in batches), "every clip is a replay clip"
    assert _keep_gap(base, base, batches) == 0.0, "a model against itself has no gap"
    free, kept = _keep_gap(runs[0.0], base, batches), _keep_gap(runs[4.0], base, batches)
    assert kept < 0.5 * free, f"keep loss did not hold the old stack: gap {kept:.4f} with keep vs {free:.4f} without"


def test_finetune_keep_needs_init_from_and_a_sane_weight(synth_data: Path, vae_run: Path, model_run: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from eartalk.recipes import train

    vae = vae_run / "checkpoints" / "vae.ckpt"
    monkeypatch.setattr(train, "KEEP_WARN_BATCHES", 3)
    raw = unstructure(train_config(tmp_path / "g", synth_data, vae, 4, init_from=str(model_run / "checkpoints" / "last.ckpt"),
                                   finetune={"keep": 1.0}))
    raw["conditions"] = [*CONDITIONS, {"name": "gaze"}]  # gaze is on every clip: no replay clip
    with caplog.at_level(logging.WARNING, logger="eartalk.recipes.train"):
        TrainRecipe().run(structure(raw, TrainConfig))
    assert "no replay clip in the first 3 batches" in caplog.text and "['gaze']" in caplog.text
    with pytest.raises(ConfigError, match="finetune.keep keeps the behaviour of the init_from checkpoint"):
        TrainRecipe().run(train_config(tmp_path / "a", synth_data, vae, 1, finetune={"keep": 1.0}))
    with pytest.raises(ConfigError, match="finetune.keep must be >= 0"):
        TrainRecipe().run(train_config(tmp_path / "b", synth_data, vae, 1, finetune={"keep": -1.0}))


def test_bad_ema_decay_is_refused_before_training() -> None:
    """Both recipes refuse a decay outside [0, 1) when the config is checked (a negative or NaN
    decay used to turn the average off without a word)."""
    for recipe, cfg_type in ((TrainRecipe, TrainConfig), (VAERecipe, VAEConfig)):
        for bad in (-0.5, float("nan"), 1.0):
            with pytest.raises(ConfigError, match=r"run.yaml: trainer.ema_decay must be in \[0, 1\)"):
                recipe.validate(structure({"trainer": {"ema_decay": bad}}, cfg_type), "run.yaml")
        recipe.validate(structure({"trainer": {"ema_decay": 0.999}}, cfg_type), "run.yaml")  # a good one passes


def test_focus_weights_reach_both_recipes_and_need_keypoints(synth_data: Path, vae_run: Path, tmp_path: Path,
                                                             monkeypatch) -> None:
    """``focus.weight`` gives the VAE loss per-pixel weights peaking on the eyes and mouth of the
    synthetic keypoints, and the model loss a ``focus`` map; a dataset without keypoints and bad
    settings are refused with errors that name them."""
    from eartalk.core.data.dataset import DatasetWriter
    from eartalk.core.engine.model import EarTalkModel
    from eartalk.core.engine.vae import FrameVAE

    seen: dict[str, list] = {"vae": [], "model": []}
    vae_loss, model_loss = FrameVAE.loss, EarTalkModel.loss
    monkeypatch.setattr(FrameVAE, "loss", lambda self, frames, weight=None: seen["vae"].append(weight) or vae_loss(self, frames, weight))
    monkeypatch.setattr(EarTalkModel, "loss", lambda self, batch: seen["model"].append(batch.get("focus")) or model_loss(self, batch))
    focus = {"weight": 12.0, "sigma": 0.04}
    cfg = structure({"out_dir": str(tmp_path / "vae"), "data": {"root": str(synth_data), "clip_frames": 2, "batch_size": 2},
                     "trainer": trainer_cfg(3), "focus": focus}, VAEConfig)
    VAERecipe.validate(cfg, "vae.yaml")
    VAERecipe().run(cfg)
    weight = seen["vae"][0]
    assert weight is not None and weight.shape == (2, 2, 1, 64, 64)
    assert float(weight.max()) > 12.0 and float(weight.min()) == pytest.approx(1.0, abs=1e-3)
    model_cfg = train_config(tmp_path / "model", synth_data, vae_run / "checkpoints" / "vae.ckpt", 2, focus=focus)
    TrainRecipe.validate(model_cfg, "train.yaml")
    TrainRecipe().run(model_cfg)
    assert seen["model"][0] is not None and seen["model"][0].shape == (2, 6, 1, 64, 64)

    plain = tmp_path / "plain"
    with DatasetWriter(plain, 64) as writer:
        writer.add("clip0", torch.randint(0, 256, (30, 3, 64, 64), dtype=torch.uint8), None)
    with pytest.raises(InputError, match="no stored extra 'keypoints'"):
        VAERecipe().run(structure({"out_dir": str(tmp_path / "v2"), "data": {"root": str(plain), "clip_frames": 2},
                                   "trainer": trainer_cfg(1), "focus": focus}, VAEConfig))
    for bad, message in (({"weight": float("nan")}, "focus.weight must be >= 0"),
                         ({"weight": 5.0, "sigma": 0.0}, "focus.sigma must be > 0"),
                         ({"weight": 5.0, "points": ["left_ey"]}, "did you mean 'left_eye'")):
        with pytest.raises(ConfigError, match=message):
            VAERecipe.validate(structure({"focus": bad}, VAEConfig), "vae.yaml")

