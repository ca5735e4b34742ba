"""The built-in metric plugins: adapters from :class:`VideoSet` inputs to the metric modules.

Each class documents its protocol; :mod:`eartalk.metrics.evaluate` runs them. Metrics that need
weights resolve them when they run, so a missing file becomes a *skipped* result with the reason.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, ClassVar

import attrs
import numpy as np
import torch

from eartalk.core.errors import InputError
from eartalk.core.types import Sample
from eartalk.metrics.base import MetricPlugin, MetricResult, Video, VideoSet
from eartalk.metrics.weights import PROXY, REFERENCE, weights_fidelity


def paired(generated: VideoSet, reference: VideoSet) -> list[tuple[Video, Video]]:
    """Pair generated with reference videos: by file stem when every stem matches, else by order."""
    ref_by_stem = {Path(v.source).stem: v for v in reference}
    stems = [Path(v.source).stem for v in generated]
    if stems and all(s in ref_by_stem for s in stems):
        return [(v, ref_by_stem[s]) for v, s in zip(generated, stems, strict=True)]
    if len(reference) < len(generated):
        warnings.warn(
            f"{len(generated)} generated but only {len(reference)} reference videos: pairing by order, "
            f"the last {len(generated) - len(reference)} generated videos are not scored",
            stacklevel=2,
        )
    return list(zip(generated, reference, strict=False))


def _frames_of(vset: VideoSet, stride: int) -> list[torch.Tensor]:
    return [v.frames[::stride] for v in vset]


@attrs.frozen
class WeightsOptions:
    """Options of a metric with one weight file.

    Attributes:
        weights: explicit path (else ``$EARTALK_*_WEIGHTS``, ``$EARTALK_WEIGHTS_DIR``, torch hub cache).
        frame_stride: use every n-th frame.
    """

    weights: str | None = None
    frame_stride: int = 1


class _WeightsMetric(MetricPlugin):
    weights_key: ClassVar[str] = ""

    def _fidelity(self, file: Path) -> tuple[str, str]:
        return weights_fidelity(self.weights_key, file)


# ---------------------------------------------------------------------------------------------
# distribution metrics (need a reference set)
# ---------------------------------------------------------------------------------------------
class FIDMetric(_WeightsMetric):
    """FID: torchmetrics FrechetInceptionDistance on every frame (whole frames, uint8)."""

    name = "fid"
    description = "FID (Inception-v3, torchmetrics, TF-compatible resize)"
    weights_key = "inception"
    requires = frozenset({"reference"})
    Options = WeightsOptions

    def compute(self, generated: VideoSet, reference: VideoSet | None = None) -> MetricResult:
        from eartalk.metrics.fid import build_fid, fid_from_frames

        assert reference is not None
        metric, file = build_fid(self.options.weights)
        stride = self.options.frame_stride
        value = fid_from_frames(metric, _frames_of(generated, stride), _frames_of(reference, stride))
        fidelity, sha = self._fidelity(file)
        protocol = generated.protocol(
            crop="whole frame", resize="299, TF-compatible bilinear (antialias=False)", frame_stride=stride,
            num_samples=int(metric.fake_features_num_samples), num_reference_samples=int(metric.real_features_num_samples),
            weights=file.name, weights_sha256=sha,
        )
        return self.result(value, fidelity=fidelity, protocol=protocol)


@attrs.frozen
class FVDOptions:
    """Options of FVD.

    Attributes:
        weights: path of ``i3d_torchscript.pt``.
        clip_stride: frames between clip starts (16 = non-overlapping clips).
    """

    weights: str | None = None
    clip_stride: int = 16


class FVDMetric(_WeightsMetric):
    """FVD: I3D features of 16-frame clips at 224 in [-1, 1]; float64 Fréchet distance."""

    name = "fvd"
    description = "FVD (I3D Kinetics-400 TorchScript, 16-frame clips)"
    weights_key = "i3d"
    requires = frozenset({"reference"})
    Options = FVDOptions

    def compute(self, generated: VideoSet, reference: VideoSet | None = None) -> MetricResult:
        from eartalk.metrics.frechet import frechet_distance
        from eartalk.metrics.fvd import CLIP_FRAMES, i3d_features, load_i3d, video_clips

        assert reference is not None
        detector, file = load_i3d(self.options.weights)
        feats = {}
        for side, vset in (("fake", generated), ("real", reference)):
            rows = [i3d_features(detector, video_clips(v.frames, CLIP_FRAMES, self.options.clip_stride)) for v in vset]
            feats[side] = torch.cat(rows)
        if min(len(feats["fake"]), len(feats["real"])) < 2:
            raise InputError(f"FVD needs at least two {CLIP_FRAMES}-frame clips per set; videos are too short")
        value = frechet_distance(feats["fake"], feats["real"], what="I3D clips")
        fidelity, sha = self._fidelity(file)
        protocol = generated.protocol(
            crop="whole frame", clip_length=CLIP_FRAMES, clip_stride=self.options.clip_stride, resize="224 bilinear",
            range="[-1, 1]", num_samples=len(feats["fake"]), num_reference_samples=len(feats["real"]),
            weights=file.name, weights_sha256=sha,
        )
        return self.result(value, fidelity=fidelity, protocol=protocol)


@attrs.frozen
class EFIDOptions:
    """Options of E-FID.

    Attributes:
        weights: Deep3DFaceRecon checkpoint (``epoch_20.pth``, key ``net_recon``).
        template: ``similarity_Lm3D_all.mat`` (the BFM 3D landmarks used for alignment).
        frame_stride: use every n-th frame.
    """

    weights: str | None = None
    template: str | None = None
    frame_stride: int = 1


class EFIDMetric(_WeightsMetric):
    """E-FID: Fréchet distance of Deep3DFaceRecon expression coefficients (80:144)."""

    name = "efid"
    description = "E-FID (Deep3DFaceRecon expression coefficients)"
    weights_key = "deep3d"
    requires = frozenset({"reference", "face"})
    Options = EFIDOptions

    def compute(self, generated: VideoSet, reference: VideoSet | None = None) -> MetricResult:
        from eartalk.metrics.efid import expression_coefficients, expression_fid, load_lm3d, load_recon_net

        assert reference is not None
        model, file = load_recon_net(self.options.weights)
        lm3d = load_lm3d(self.options.template)
        sets = {}
        for side, vset in (("fake", generated), ("real", reference)):
            rows = [expression_coefficients(model, v.frames, t, lm3d, self.options.frame_stride)
                    for v, t in zip(vset, vset.faces(), strict=True)]
            sets[side] = torch.cat(rows)
        value = expression_fid(sets["fake"], sets["real"])
        fidelity, sha = self._fidelity(file)
        protocol = generated.protocol(
            crop="Deep3DFaceRecon 5-point POS alignment to 224 (MediaPipe 468, 473, 1, 61, 291)",
            coefficients="expression 80:144", num_samples=len(sets["fake"]), num_reference_samples=len(sets["real"]),
            frame_stride=self.options.frame_stride, weights=file.name, weights_sha256=sha,
        )
        return self.result(value, fidelity=fidelity, protocol=protocol)


# ---------------------------------------------------------------------------------------------
# Sync-C / Sync-D
# ---------------------------------------------------------------------------------------------
@attrs.frozen
class SyncOptions:
    """Options of Sync-C / Sync-D.

    Attributes:
        weights: path of ``syncnet_v2.model``.
        mode: ``"face"`` (face-track crops resized to 224, syncnet_python) or ``"frame"``
            (whole frame resized to 224, Wav2Lip's LRS-style evaluation).
        vshift: shifts tried on each side.
    """

    weights: str | None = None
    mode: str = "face"
    vshift: int = 15


class _SyncBase(_WeightsMetric):
    weights_key = "syncnet"
    requires = frozenset({"audio"})
    Options = SyncOptions
    key: ClassVar[str] = ""

    def _scores(self, generated: VideoSet) -> dict[str, Any]:
        from eartalk.metrics.syncnet import load_syncnet, sync_scores, syncnet_embeddings

        opts = self.options
        if opts.mode not in ("face", "frame"):
            raise InputError(f"Sync mode must be 'face' or 'frame', got {opts.mode!r}")
        cache_key = f"syncnet:{opts.mode}:{opts.weights}:{opts.vshift}"
        if cache_key not in generated.cache:
            model, file = load_syncnet(opts.weights)
            tracks = generated.faces() if opts.mode == "face" else [None] * len(generated)
            per_video = []
            for video, track in zip(generated, tracks, strict=True):
                if video.audio is None:
                    raise InputError(f"{video.source} has no audio track; pass --audio")
                frames = video.frames
                if track is not None:
                    from eartalk.core.media.face import crop_frames, face_boxes

                    frames = crop_frames(frames, face_boxes(track, *frames.shape[-2:]), 224)
                per_video.append(sync_scores(*syncnet_embeddings(model, frames, video.audio), opts.vshift))
            fidelity, sha = self._fidelity(file)
            generated.cache[cache_key] = {
                "sync_c": float(np.mean([s["sync_c"] for s in per_video])),
                "sync_d": float(np.mean([s["sync_d"] for s in per_video])),
                "offsets": [s["offset"] for s in per_video],
                "fidelity": fidelity,
                "protocol": generated.protocol(
                    crop="face track, 224x224" if opts.mode == "face" else "whole frame resized to 224x224",
                    window="5 frames BGR 0-255 / 20 MFCC frames (13 coeffs, 100 fps)", vshift=opts.vshift,
                    weights=file.name, weights_sha256=sha,
                ),
            }
        return generated.cache[cache_key]

    def compute(self, generated: VideoSet, reference: VideoSet | None = None) -> MetricResult:
        scores = self._scores(generated)
        return self.result(scores[self.key], fidelity=scores["fidelity"], protocol=scores["protocol"],
                           offsets=scores["offsets"])


class SyncCMetric(_SyncBase):
    """Sync-C: median minus minimum of SyncNet's mean distance over shifts (higher is better)."""

    name = "sync_c"
    description = "Sync-C (SyncNet confidence)"
    higher_is_better = True
    key = "sync_c"


class SyncDMetric(_SyncBase):
    """Sync-D: minimum over shifts of SyncNet's mean audio-visual distance (lower is better)."""

    name = "sync_d"
    description = "Sync-D (SyncNet distance)"
    higher_is_better = False
    key = "sync_d"


# ---------------------------------------------------------------------------------------------
# paired metrics
# ---------------------------------------------------------------------------------------------
@attrs.frozen
class NoWeightsOptions:
    """Options of a paired frame metric.

    Attributes:
        frame_stride: use every n-th frame.
    """

    frame_stride: int = 1


class _PairedFrames(MetricPlugin):
    requires = frozenset({"reference", "paired"})
    Options = NoWeightsOptions

    def _metric(self):
        raise NotImplementedError

    def compute(self, generated: VideoSet, reference: VideoSet | None = None) -> MetricResult:
        from eartalk.metrics.image import paired_frames

        assert reference is not None
        metric = self._metric()
        frames = 0
        for fake_video, real_video in paired(generated, reference):
            fake, real = paired_frames(fake_video.frames[:: self.options.frame_stride], real_video.frames[:: self.options.frame_stride])
            for i in range(0, fake.shape[0], 16):
                metric.update(fake[i:i + 16], real[i:i + 16])
            frames += fake.shape[0]
        return self.result(float(metric.compute()), fidelity=REFERENCE,
                           protocol=generated.protocol(crop="whole frame", paired_frames=frames, range="[0, 1]"))


class PSNRMetric(_PairedFrames):
    """PSNR over paired frames (data range 1, averaged per frame)."""

    name = "psnr"
    description = "PSNR (paired frames)"
    higher_is_better = True

    def _metric(self):
        from eartalk.metrics.image import make_psnr

        return make_psnr()


class SSIMMetric(_PairedFrames):
    """SSIM over paired frames, Gaussian 11x11 window, sigma 1.5."""

    name = "ssim"
    description = "SSIM (Gaussian 11, sigma 1.5)"
    higher_is_better = True

    def _metric(self):
        from eartalk.metrics.image import make_ssim

        return make_ssim()


class LPIPSMetric(_WeightsMetric):
    """LPIPS over paired frames with a local TorchScript network."""

    name = "lpips"
    description = "LPIPS (paired frames, TorchScript weights)"
    weights_key = "lpips"
    requires = frozenset({"reference", "paired"})
    Options = WeightsOptions

    def compute(self, generated: VideoSet, reference: VideoSet | None = None) -> MetricResult:
        from eartalk.metrics.image import load_lpips, lpips_distance, paired_frames

        assert reference is not None
        net, file = load_lpips(self.options.weights)
        values = []
        for fake_video, real_video in paired(generated, reference):
            s = self.options.frame_stride
            values.append(lpips_distance(net, *paired_frames(fake_video.frames[::s], real_video.frames[::s])))
        all_values = torch.cat(values)
        fidelity, sha = self._fidelity(file)
        return self.result(float(all_values.mean()), fidelity=fidelity, protocol=generated.protocol(
            crop="whole frame", paired_frames=len(all_values), weights=file.name, weights_sha256=sha))


@attrs.frozen
class LMDOptions:
    """Options of LMD.

    Attributes:
        reduction: ``"mean"`` or ``"sum"`` over points.
    """

    reduction: str = "mean"


class _LMDBase(MetricPlugin):
    fidelity = PROXY
    requires = frozenset({"reference", "paired", "face"})
    Options = LMDOptions
    subset_name: ClassVar[str] = ""

    def compute(self, generated: VideoSet, reference: VideoSet | None = None) -> MetricResult:
        from eartalk.metrics import landmarks
        from eartalk.metrics.landmarks import LandmarkDistance, landmark_points

        assert reference is not None
        subset = getattr(landmarks, self.subset_name)
        generated.faces()
        reference.faces()
        metric = LandmarkDistance(self.options.reduction)
        for fake, real in paired(generated, reference):
            n = min(fake.num_frames, real.num_frames)
            h, w = fake.frames.shape[-2:]
            metric.update(landmark_points(fake.face.slice(0, n), h, w, subset),
                          landmark_points(real.face.slice(0, n), h, w, subset))
        return self.result(float(metric.compute()), protocol=generated.protocol(
            landmarks=f"MediaPipe {len(subset)}-point subset (docs/metrics.md)", units="pixels of the generated frame",
            reduction=self.options.reduction, num_samples=int(metric.count)))


class MouthLMDMetric(_LMDBase):
    """M-LMD on MediaPipe's 20 mouth points (dlib 48-67 analogue); proxy of the dlib-based LMD."""

    name = "m_lmd"
    description = "M-LMD on MediaPipe mouth landmarks (proxy of dlib LMD)"

    subset_name = "MOUTH"


class FaceLMDMetric(_LMDBase):
    """F-LMD on a 68-point-like MediaPipe subset; proxy of the dlib-based LMD."""

    name = "f_lmd"
    description = "F-LMD on a 68-point-like MediaPipe subset (proxy of dlib LMD)"

    subset_name = "MEDIAPIPE_68"


@attrs.frozen
class CSIMOptions:
    """Options of CSIM.

    Attributes:
        weights: ArcFace ``backbone.pth`` (arcface_torch iresnet).
        arch: iresnet depth (``r18``, ``r34``, ``r50``, ``r100``).
        reference_frame: frame of the paired reference video giving the identity.
        frame_stride: use every n-th generated frame.
    """

    weights: str | None = None
    arch: str = "r100"
    reference_frame: int = 0
    frame_stride: int = 1


class CSIMMetric(_WeightsMetric):
    """CSIM: mean ArcFace cosine between the reference face and every generated frame."""

    name = "csim"
    description = "CSIM (ArcFace cosine similarity)"
    higher_is_better = True
    weights_key = "arcface"
    requires = frozenset({"reference", "paired", "face"})
    Options = CSIMOptions

    def compute(self, generated: VideoSet, reference: VideoSet | None = None) -> MetricResult:
        from eartalk.metrics.csim import IdentitySimilarity, identity_embeddings, load_arcface

        assert reference is not None
        model, file = load_arcface(self.options.weights, self.options.arch)
        generated.faces()
        reference.faces()
        metric = IdentitySimilarity()
        for fake, real in paired(generated, reference):
            k = min(self.options.reference_frame, real.num_frames - 1)
            ref = identity_embeddings(model, real.frames[k:k + 1], real.face.slice(k, k + 1))
            if ref.shape[0] == 0:
                raise InputError(f"CSIM: no face in frame {k} of reference {real.source}")
            emb = identity_embeddings(model, fake.frames, fake.face, self.options.frame_stride)
            if emb.shape[0]:
                metric.update(ref[0], emb)
        fidelity, sha = self._fidelity(file)
        return self.result(float(metric.compute()), fidelity=fidelity, protocol=generated.protocol(
            crop="ArcFace 112x112 five-point similarity alignment", arch=self.options.arch,
            num_samples=int(metric.count), weights=file.name, weights_sha256=sha))


# ---------------------------------------------------------------------------------------------
# proxies
# ---------------------------------------------------------------------------------------------
@attrs.frozen
class LipSyncOptions:
    """Options of the lip-sync proxy.

    Attributes:
        max_lag: lags tried on each side, in frames.
        alpha: ridge strength of the audio-to-mouth regressor.
        fit_on_reference: fit the regressor on the reference set when it has audio (else per-clip
            cross-validation).
    """

    max_lag: int = 15
    alpha: float = 0.1
    fit_on_reference: bool = True


class LipSyncProxyMetric(MetricPlugin):
    """Lip-sync proxy: peak audio-mouth correlation over lags (see :mod:`eartalk.metrics.proxies`)."""

    name = "lipsync_proxy"
    description = "lip-sync proxy: audio-to-mouth correlation, best lag (MediaPipe; not Sync-C)"
    fidelity = PROXY
    higher_is_better = True
    requires = frozenset({"audio", "face"})
    Options = LipSyncOptions

    def compute(self, generated: VideoSet, reference: VideoSet | None = None) -> MetricResult:
        from eartalk.metrics.proxies import lipsync_proxy, regressor_from_clips

        opts = self.options
        regressor = None
        if opts.fit_on_reference and reference is not None and all(v.audio is not None for v in reference):
            regressor = regressor_from_clips([(v.audio, t) for v, t in zip(reference, reference.faces(), strict=True)], opts.alpha)
        per_video = []
        for video, track in zip(generated, generated.faces(), strict=True):
            if video.audio is None:
                raise InputError(f"{video.source} has no audio track; pass --audio")
            per_video.append(lipsync_proxy(video.audio, track, regressor, opts.max_lag))
        return self.result(
            float(np.mean([s["value"] for s in per_video])),
            protocol=generated.protocol(
                mode="regressor fitted on the reference set" if regressor is not None else "per-clip cross-validated ridge",
                max_lag=opts.max_lag, audio="6 log-mel bands + deltas", mouth="lip opening/width + 3 blendshapes + deltas",
            ),
            lag_frames=int(np.median([s["lag_frames"] for s in per_video])),
            confidence=float(np.mean([s["confidence"] for s in per_video])),
            per_video=[{k: s[k] for k in ("value", "lag_frames", "confidence")} for s in per_video],
        )


class ExpressionFIDProxyMetric(MetricPlugin):
    """Fréchet distance over MediaPipe's 52 blendshapes (proxy of E-FID; not E-FID)."""

    name = "expression_fid_proxy"
    description = "expression FID proxy over MediaPipe blendshapes (not E-FID)"
    fidelity = PROXY
    requires = frozenset({"reference", "face"})

    def compute(self, generated: VideoSet, reference: VideoSet | None = None) -> MetricResult:
        from eartalk.metrics.proxies import blendshape_fid

        assert reference is not None
        value = blendshape_fid(generated.faces(), reference.faces())
        return self.result(value, protocol=generated.protocol(features="52 MediaPipe blendshapes"))


class IdentityProxyMetric(MetricPlugin):
    """Identity similarity over landmark geometry (proxy of CSIM; not CSIM)."""

    name = "identity_proxy"
    description = "identity proxy over face landmark geometry (not CSIM)"
    fidelity = PROXY
    higher_is_better = True
    requires = frozenset({"reference", "paired", "face"})

    def compute(self, generated: VideoSet, reference: VideoSet | None = None) -> MetricResult:
        from eartalk.metrics.proxies import GEOMETRY_POINTS, geometry_similarity

        assert reference is not None
        generated.faces()
        reference.faces()
        values = [geometry_similarity(f.face, r.face) for f, r in paired(generated, reference)]
        return self.result(float(np.mean(values)), protocol=generated.protocol(
            features=f"normalised pairwise distances of {len(GEOMETRY_POINTS)} MediaPipe landmarks"))


# ---------------------------------------------------------------------------------------------
# control fidelity
# ---------------------------------------------------------------------------------------------
class _ControlMetric(MetricPlugin):
    """Control fidelity against the paired reference (driving) video's re-extracted signal."""

    fidelity = PROXY
    requires = frozenset({"reference", "paired", "face"})
    control: ClassVar[str] = ""

    def compute(self, generated: VideoSet, reference: VideoSet | None = None) -> MetricResult:
        from eartalk.core.registry import get_registry
        from eartalk.metrics.control import ControlSkipped, control_error, headline, reextract

        assert reference is not None
        try:
            plugin = get_registry().condition(self.control)(d_model=8)
        except KeyError as err:
            return self.skipped(f"condition plugin {self.control!r} is not installed ({err})")
        generated.faces()
        reference.faces()
        rows = []
        try:
            for fake, real in paired(generated, reference):
                commanded = reextract(plugin, Sample(frames=real.frames, audio=real.audio, face=real.face,
                                                     metadata={"source": real.source}))
                got = reextract(plugin, Sample(frames=fake.frames, audio=fake.audio, face=fake.face,
                                               metadata={"source": fake.source}))
                rows.append(control_error(self.control, commanded, got))
        except ControlSkipped as err:
            return self.skipped(str(err))
        key, _ = headline(self.control, rows[0])
        extra = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != key}
        value = float(np.mean([r[key] for r in rows]))
        return self.result(None if math.isnan(value) else value, protocol=generated.protocol(
            commanded="signal re-extracted from the paired reference (driving) video", headline=key,
            extractor=f"condition plugin {self.control!r}"), **extra)


class HeadPoseControl(_ControlMetric):
    """Head-pose control error: MAE in degrees (mean of yaw, pitch, roll; per axis in the extras)."""

    name = "control_head_pose"
    description = "control fidelity: head pose MAE (degrees)"
    control = "head_pose"


class BlinkControl(_ControlMetric):
    """Blink control fidelity: F1 of closed eyes (threshold 0.5)."""

    name = "control_blink"
    description = "control fidelity: blink F1"
    higher_is_better = True
    control = "blink"


class GazeControl(_ControlMetric):
    """Gaze control error: mean Euclidean error per eye."""

    name = "control_gaze"
    description = "control fidelity: gaze error"
    control = "gaze"


class ExpressionControl(_ControlMetric):
    """Expression control error: MAE over blendshapes."""

    name = "control_expression"
    description = "control fidelity: expression MAE"
    control = "expression"


class EmotionControl(_ControlMetric):
    """Emotion control accuracy (needs an emotion classifier; skipped otherwise)."""

    name = "control_emotion"
    description = "control fidelity: emotion accuracy (needs a classifier)"
    higher_is_better = True
    control = "emotion"


BUILTIN_METRICS: tuple[type[MetricPlugin], ...] = (
    FIDMetric, FVDMetric, SyncCMetric, SyncDMetric, EFIDMetric, MouthLMDMetric, FaceLMDMetric, CSIMMetric,
    PSNRMetric, SSIMMetric, LPIPSMetric, LipSyncProxyMetric, ExpressionFIDProxyMetric, IdentityProxyMetric,
    HeadPoseControl, BlinkControl, GazeControl, ExpressionControl, EmotionControl,
)
