import hashlib

import pytest

from eartalk.core.errors import WeightsNotFoundError
from eartalk.metrics.weights import (
    ENV_DIR,
    REFERENCE,
    UNVERIFIED,
    WeightsSpec,
    resolve_weights,
    weights_fidelity,
)


@pytest.fixture()
def clean_env(monkeypatch, tmp_path):
    for var in (ENV_DIR, "EARTALK_I3D_WEIGHTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return monkeypatch


def test_search_order(clean_env, tmp_path):
    hub = tmp_path / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "i3d_torchscript.pt").write_bytes(b"hub")
    assert resolve_weights("i3d") == hub / "i3d_torchscript.pt"

    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "i3d_torchscript.pt").write_bytes(b"dir")
    clean_env.setenv(ENV_DIR, str(folder))
    assert resolve_weights("i3d") == folder / "i3d_torchscript.pt"

    single = tmp_path / "custom.pt"
    single.write_bytes(b"env")
    clean_env.setenv("EARTALK_I3D_WEIGHTS", str(single))
    assert resolve_weights("i3d") == single

    explicit = tmp_path / "explicit.pt"
    explicit.write_bytes(b"explicit")
    assert resolve_weights("i3d", explicit) == explicit


def test_missing_file_message(clean_env, tmp_path):
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weights("deep3d")
    text = str(info.value)
    for part in ("epoch_20.pth", "Deep3DFaceRecon_pytorch", "Licence", ENV_DIR, "EARTALK_DEEP3D_WEIGHTS", "never downloads"):
        assert part in text
    # an explicit path that does not exist is an error even when the file exists elsewhere
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "epoch_20.pth").write_bytes(b"x")
    clean_env.setenv(ENV_DIR, str(tmp_path / "w"))
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        resolve_weights("deep3d", tmp_path / "missing.pth")


def test_fidelity_reference_only_on_known_hash(tmp_path):
    data = b"reference weights"
    sha = hashlib.sha256(data).hexdigest()
    spec = WeightsSpec("toy", "toy-weights.pth", "EARTALK_TOY", "toy project", "MIT", sha256_prefix=sha[:8])
    good = tmp_path / "toy-weights.pth"
    good.write_bytes(data)
    assert weights_fidelity(spec, good) == (REFERENCE, sha)
    other = tmp_path / "sub"
    other.mkdir()
    (other / "toy-weights.pth").write_bytes(b"fine-tuned weights")
    fidelity, other_sha = weights_fidelity(spec, other / "toy-weights.pth")
    assert fidelity == UNVERIFIED and other_sha != sha
    unknown = WeightsSpec("toy2", "toy2.pth", "EARTALK_TOY2", "toy project", "MIT")
    assert weights_fidelity(unknown, good)[0] == UNVERIFIED
