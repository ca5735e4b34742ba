"""Lip-sync, expression and identity proxies on the real clips (MediaPipe tracks cached per session)."""

from __future__ import annotations

import pytest
import torch

from eartalk.metrics.proxies import (
    MAX_LAG,
    audio_features,
    blendshape_fid,
    geometry_similarity,
    lipsync_curve,
    lipsync_proxy,
    mouth_features,
    regressor_from_clips,
)

DELAY = 8  # frames


def lag_shift_check(real_tracks, stems: list[str]) -> dict[str, dict]:
    """For every clip: a regressor fitted on the *other* clips (leave-one-out, at test time),
    the proxy on the clip, and on the clip with its audio delayed by DELAY frames."""
    out = {}
    for stem in stems:
        others = [real_tracks.get(s)[:2] for s in stems if s != stem]
        regressor = regressor_from_clips(others)
        audio, track, _ = real_tracks.get(stem)
        delayed = torch.cat([torch.zeros(DELAY * 640), audio])[: audio.shape[0]]
        original = lipsync_proxy(audio, track, regressor)
        shifted = lipsync_proxy(delayed, track, regressor)
        n = track.num_frames
        mouth = mouth_features(track)
        before = lipsync_curve(audio_features(audio, n), mouth, regressor)[MAX_LAG + original["lag_frames"]]
        after = lipsync_curve(audio_features(delayed, n), mouth, regressor)[MAX_LAG + original["lag_frames"]]
        moved = shifted["lag_frames"] - original["lag_frames"]
        out[stem] = {
            "lag": original["lag_frames"], "lag_delayed": shifted["lag_frames"], "peak": original["value"],
            "confidence": original["confidence"], "score_at_lag_before": before, "score_at_lag_after": after,
            "passed": abs(moved - DELAY) <= 1 and after < before,
        }
    return out


def _report(results: dict[str, dict]) -> str:
    return "\n".join(
        f"{k}: lag {v['lag']} -> {v['lag_delayed']}, peak {v['peak']:.3f}, conf {v['confidence']:.3f}, "
        f"score at lag {v['score_at_lag_before']:.3f} -> {v['score_at_lag_after']:.3f}, passed={v['passed']}"
        for k, v in results.items()
    )


def test_delayed_audio_moves_best_lag_three_clips(real_tracks, default_clips):
    results = lag_shift_check(real_tracks, list(default_clips))
    print(_report(results))
    assert all(r["passed"] for r in results.values()), _report(results)
    for r in results.values():
        assert r["confidence"] > 0


@pytest.mark.slow
def test_delayed_audio_moves_best_lag_eight_clips(real_tracks):
    stems = real_tracks.stems()
    assert len(stems) == 8
    results = lag_shift_check(real_tracks, stems)
    print(_report(results))
    assert sum(r["passed"] for r in results.values()) >= 6, _report(results)


def test_per_clip_mode_without_regressor_returns_a_curve(real_tracks, default_clips):
    audio, track, _ = real_tracks.get(default_clips[0])
    curve = lipsync_curve(audio_features(audio, track.num_frames), mouth_features(track), None)
    assert curve.shape == (2 * MAX_LAG + 1,)
    assert float(curve.max()) > 0.1  # real speech: held-out predictions correlate at the best lag


def test_expression_and_identity_proxies(real_tracks, default_clips):
    _, a, _ = real_tracks.get(default_clips[0])
    _, b, _ = real_tracks.get(default_clips[1])
    with pytest.warns(UserWarning, match="rank-deficient"):
        assert blendshape_fid([a], [a]) == pytest.approx(0.0, abs=1e-6)
    with pytest.warns(UserWarning):
        assert blendshape_fid([a], [b]) > 0.05
    same = geometry_similarity(a.slice(100, 200), a.slice(0, 100))
    other = geometry_similarity(b, a)
    assert same > 0.95
    assert other < same
