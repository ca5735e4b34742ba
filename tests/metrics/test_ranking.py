import pytest

from eartalk.metrics.ranking import average_ranks


def test_direction_aware_ranks_with_ties_averaged():
    table = {
        "a": {"fid": 10.0, "sync_c": 8.0, "lpips": None},
        "b": {"fid": 20.0, "sync_c": 8.0, "lpips": 0.1},
        "c": {"fid": 10.0, "sync_c": 5.0, "lpips": 0.2},
    }
    out = average_ranks(table, {"fid": False, "sync_c": True, "lpips": False})
    assert out["metrics"] == ["fid", "sync_c"]  # lpips is missing for one method
    assert out["methods"] == ["a", "b", "c"]
    assert out["ranks"]["fid"] == {"a": 1.5, "b": 3.0, "c": 1.5}  # lower is better, tie averaged
    assert out["ranks"]["sync_c"] == {"a": 1.5, "b": 1.5, "c": 3.0}  # higher is better
    assert out["avg_rank"] == {"a": 1.5, "b": 2.25, "c": 2.25}


def test_no_common_metric_is_an_error():
    with pytest.raises(ValueError, match="no metric"):
        average_ranks({"a": {"fid": None}, "b": {"fid": 1.0}}, {"fid": False})
