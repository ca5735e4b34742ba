"""Error types. Every error a user can cause is an :class:`EartalkError` whose message names
the input at fault and what to do about it; the CLI prints it without a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class EartalkError(Exception):
    """Base class for errors caused by user input, configuration or installed plugins."""


class ConfigError(EartalkError, ValueError):
    """A configuration file or override is invalid (unknown key, wrong type, bad value)."""


class PluginError(EartalkError):
    """An installed plugin is broken: import error, duplicate name, bad hook, bad protocol."""


class UnknownPluginError(EartalkError, KeyError):
    """A plugin name was asked for that no installed plugin provides."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class InputError(EartalkError, ValueError):
    """A media file or value given by the user cannot be used (missing, corrupt, silent, no face...)."""


class WeightsNotFoundError(EartalkError, FileNotFoundError):
    """A pretrained weight file is needed but was not found locally. Nothing is downloaded."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
