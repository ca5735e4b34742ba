"""The foundation of eartalk: errors, types, config, hookspecs, registry, the condition-token
protocol and the CLI root; the engine, media and data tools live in the subpackages below.

- :mod:`eartalk.core.engine`: frame VAE, SFA backbone, MAR decoder, model, streaming session, presets.
- :mod:`eartalk.core.media`: video/audio I/O and the MediaPipe face pipeline.
- :mod:`eartalk.core.data`: dataset format and DataModule, ``prepare``, ``synth``.

The top-level modules import nothing from the subpackages at import time. Module paths from before
the split (``eartalk.core.model``, ``eartalk.core.face``, ...) still import, as aliases of their new
homes, so code and notebooks written against them keep working.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

#: Old module path (under ``eartalk.core``) -> new one.
MOVED_MODULES: dict[str, str] = {
    "vae": "engine.vae",
    "backbone": "engine.backbone",
    "mar": "engine.mar",
    "model": "engine.model",
    "session": "engine.session",
    "presets": "engine.presets",
    "bench": "engine.bench",
    "model_commands": "engine.commands",
    "face": "media.face",
    "dataset": "data.dataset",
    "prepare": "data.prepare",
    "synth": "data.synth",
    "data_commands": "data.commands",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec):  # the new module object itself is the old name's module
        return importlib.import_module(self.target)

    def exec_module(self, module) -> None:
        return None


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Resolves ``eartalk.core.<old>`` to the module's new home (see :data:`MOVED_MODULES`)."""

    def find_spec(self, fullname, path=None, target=None):
        prefix, _, rest = fullname.rpartition(".")
        if prefix != __name__ or rest not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(f"{__name__}.{MOVED_MODULES[rest]}"))


if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())
