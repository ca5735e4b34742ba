"""The condition-token protocol: how a control signal becomes FCIC tokens.

Frame Condition In-Context (FCIC) puts every control signal inside each frame's block of the
backbone's sequence. A :class:`ConditionPlugin` owns one signal:

1. ``extract(sample)`` turns a training :class:`~eartalk.core.types.Sample` into a per-frame
   signal ``(T, signal_dim)``. Rows that are NaN mean "absent at this frame".
2. ``encode(signal)`` is the trainable tokenizer: ``(B, T, signal_dim) -> (B, T, slots, d_model)``.
   It must be frame-local: tokens of frame ``t`` depend only on ``signal[:, t]`` (context such as
   audio lookahead is packed into the row by ``extract``), so streaming needs no future rows.
3. ``forward(signal, present)`` replaces absent frames by the learned ``null_token``, so a
   control can be missing, start or stop at any frame.
4. ``values(value, num_frames)`` turns an inference-time value (array, file, constant, label,
   mapping, driving video) into a signal, the same shape ``extract`` gives.

A plugin declares ``name`` (unique, used in configs), an attrs ``Options`` class (its config,
structured strictly from YAML) and sets ``slots``/``signal_dim`` from its options.

Self-description (feeds ``eartalk plugins show NAME``, ``eartalk generate --help`` and
docs/conditions.md): ``description``, ``column_docs`` (:class:`Column`: unit, range, meaning),
``labels`` (text values and what they mean) and ``value_examples``. Options declare their help,
choices and ranges with :func:`option`, :class:`choice` and :class:`in_range`;
:func:`describe_plugin` collects it all.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import attrs
import numpy as np
import torch
from torch import nn

from eartalk.core.errors import ConfigError, InputError, PluginError, did_you_mean
from eartalk.core.types import Sample

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v"})
AUDIO_SUFFIXES = frozenset({".wav", ".mp3", ".m4a", ".flac", ".ogg", ".aac", ".opus"})
ARRAY_SUFFIXES = frozenset({".npy", ".csv", ".json"})


@attrs.frozen
class NoOptions:
    """Options of a plugin that has none."""


# --------------------------------------------------------------------------------------------
# options: one way to declare help, choices and ranges
# --------------------------------------------------------------------------------------------
class OptionError(ConfigError):
    """A plugin option has a value outside what it allows.

    Attributes:
        key: the option's name (config errors show it after the file and the plugin entry).
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _render(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


class choice:  # noqa: N801 - reads like a function in Options declarations
    """attrs validator: the value must be one of ``allowed`` (``None`` may be listed).

    Example::

        source: str = option("blendshapes", help="where gaze comes from", validator=choice("blendshapes", "iris"))
    """

    def __init__(self, *allowed: Any) -> None:
        if not allowed:
            raise ValueError("choice() needs at least one allowed value")
        self.allowed = tuple(allowed)

    def describe(self) -> str:
        """The allowed values as help text shows them."""
        return "one of " + ", ".join(_render(a) for a in self.allowed)

    def __call__(self, instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value in self.allowed:
            return
        hint = did_you_mean(value, [a for a in self.allowed if isinstance(a, str)]) if isinstance(value, str) else ""
        raise OptionError(attribute.name, f"option {attribute.name!r} must be {self.describe()}; got {_render(value)}{hint}")

    def __repr__(self) -> str:
        return f"choice({', '.join(map(repr, self.allowed))})"


class in_range:  # noqa: N801
    """attrs validator: a number within bounds (``None``: unbounded on that side).

    Args:
        low, high: bounds.
        low_open, high_open: exclude the bound itself (``>`` instead of ``>=``).
        integer: the value must also be a whole number.
        optional: ``None`` is also accepted (for options where None means "not set").
    """

    def __init__(self, low: float | None = None, high: float | None = None, *, low_open: bool = False,
                 high_open: bool = False, integer: bool = False, optional: bool = False) -> None:
        self.low, self.high = low, high
        self.low_open, self.high_open = low_open, high_open
        self.integer, self.optional = integer, optional

    def describe(self) -> str:
        """The allowed range as help text shows it, e.g. ``>= 1`` or ``in [0, 1]``."""
        kind = "an integer " if self.integer else ""
        if self.low is not None and self.high is not None:
            text = f"{kind}in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        elif self.low is not None:
            text = f"{kind}{'>' if self.low_open else '>='} {self.low}"
        elif self.high is not None:
            text = f"{kind}{'<' if self.high_open else '<='} {self.high}"
        else:
            text = "an integer" if self.integer else "a number"
        return text + (" or None" if self.optional else "")

    def __call__(self, instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is None and self.optional:
            return
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and self.integer:
            ok = float(value).is_integer()
        if ok and self.low is not None:
            ok = value > self.low if self.low_open else value >= self.low
        if ok and self.high is not None:
            ok = value < self.high if self.high_open else value <= self.high
        if not ok:
            raise OptionError(attribute.name, f"option {attribute.name!r} must be {self.describe()}; got {_render(value)}")

    def __repr__(self) -> str:
        return f"in_range({self.describe()})"


def option(default: Any = attrs.NOTHING, *, help: str = "", validator: Any = None, factory: Any = None,
           converter: Any = None, unit: str = "") -> Any:
    """An attrs field of a plugin's ``Options`` with its help text (the documented way).

    ``help``, ``unit`` and the validator's allowed values (:class:`choice`, :class:`in_range`)
    appear in ``eartalk plugins show`` and docs/conditions.md; a bad value is a config error
    naming the file, the plugin entry and the key, with the allowed values.

    Example::

        @attrs.frozen
        class HeadScaleOptions:
            slots: int = option(1, help="FCIC slots per frame", validator=in_range(1, integer=True))
            mode: str = option("width", help="what is measured", validator=choice("width", "area"))
    """
    metadata = {"eartalk_help": help, "eartalk_unit": unit}
    kwargs: dict[str, Any] = {"metadata": metadata, "validator": validator, "converter": converter}
    if factory is not None:
        kwargs["factory"] = factory
    else:
        kwargs["default"] = default
    return attrs.field(**kwargs)


@attrs.frozen
class OptionDoc:
    """One option as help shows it."""

    name: str
    type: str
    default: Any
    help: str = ""
    allowed: str = ""
    unit: str = ""


def _validator_texts(validator: Any) -> list[str]:
    if validator is None:
        return []
    inner = getattr(validator, "_validators", None)  # attrs.validators.and_
    if inner is not None:
        return [t for v in inner for t in _validator_texts(v)]
    if hasattr(validator, "describe"):
        return [validator.describe()]
    options = getattr(validator, "options", None)  # attrs.validators.in_
    if options is not None:
        return ["one of " + ", ".join(_render(o) for o in options)]
    return []


def _docstring_attributes(cls: type) -> dict[str, str]:
    """``name: text`` pairs from the ``Attributes:`` section of Google-style docstrings (MRO)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        doc = klass.__doc__ or ""
        lines = doc.splitlines()
        try:
            start = next(i for i, line in enumerate(lines) if line.strip() == "Attributes:")
        except StopIteration:
            continue
        name, text = None, []
        indent = None
        for line in lines[start + 1:]:
            if not line.strip():
                if name:
                    out[name] = " ".join(text)
                name, text = None, []
                continue
            stripped = line.strip()
            cur = len(line) - len(line.lstrip())
            if indent is None:
                indent = cur
            if cur < indent:
                break
            if cur == indent and ":" in stripped:
                if name:
                    out[name] = " ".join(text)
                name, rest = stripped.split(":", 1)
                name, text = name.strip(), [rest.strip()]
            elif name:
                text.append(stripped)
        if name:
            out[name] = " ".join(text)
    return out


def describe_options(options_cls: type) -> list[OptionDoc]:
    """Help of every field of an attrs ``Options`` class (help from :func:`option`, else its docstring)."""
    if not attrs.has(options_cls):
        return []
    from_doc = _docstring_attributes(options_cls)
    docs = []
    for field in attrs.fields(options_cls):
        default = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory() if not default.takes_self else None
        elif default is attrs.NOTHING:
            default = "(required)"
        type_name = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
        help_text = field.metadata.get("eartalk_help") or from_doc.get(field.name, "")
        docs.append(OptionDoc(field.name, str(type_name), default, help_text,
                              "; ".join(_validator_texts(field.validator)), field.metadata.get("eartalk_unit", "")))
    return docs


# --------------------------------------------------------------------------------------------
# columns and self-description
# --------------------------------------------------------------------------------------------
@attrs.frozen
class Column:
    """What one signal column means (for help and docs).

    Attributes:
        name: the column name (as in ``columns``), or ``"*"`` for every column not listed.
        unit: e.g. ``"degrees"``, ``"0-1 score"`` (empty: unitless).
        range: ``(low, high)`` typical or allowed values (None: unbounded / not stated).
        meaning: sign conventions and the like, e.g. ``"> 0: the subject turns toward the image right"``.
    """

    name: str
    unit: str = ""
    range: tuple[float | None, float | None] | None = None
    meaning: str = ""

    def range_text(self) -> str:
        if self.range is None:
            return ""
        low, high = self.range
        if low is not None and high is not None:
            return f"[{_num(low)}, {_num(high)}]"
        if low is not None:
            return f">= {_num(low)}"
        return "" if high is None else f"<= {_num(high)}"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


class ConditionPlugin(nn.Module):
    """Base class of every condition plugin (built-in or third-party).

    Subclasses set the class attributes and call ``super().__init__`` with their slot count and
    signal width, then build their trainable tokenizer::

        class Brightness(ConditionPlugin):
            name = "brightness"
            Options = BrightnessOptions  # attrs.frozen class

            def __init__(self, d_model, options=None):
                options = options or self.Options()
                super().__init__(d_model, options, slots=1, signal_dim=1)
                self.proj = nn.Linear(1, d_model)

            def extract(self, sample):
                return sample.frames.float().mean(dim=(1, 2, 3))[:, None] / 255

            def encode(self, signal):  # (B, T, 1) -> (B, T, 1, d_model)
                return self.proj(signal)[:, :, None]

    Attributes:
        name: unique plugin name used by configs and the CLI.
        Options: attrs class holding this plugin's configuration.
        requires: sample fields ``extract`` reads (``"frames"``, ``"audio"``, ``"face"``, ``"metadata"``).
        columns: optional names of the ``signal_dim`` columns (CSV headers, JSON keys).
        lookahead_frames: future frames of input the signal of frame ``t`` needs (streaming latency).
        description: one line for ``eartalk plugins``.
        column_docs: :class:`Column` entries (unit, range, meaning) by column name (``"*"``: the rest).
        labels: text values :meth:`parse_label` accepts, each with what it means.
        value_examples: extra value forms to show in help (e.g. ``"sad:3"``), with their meaning.
        absent_fill: the row ``encode`` sees on absent frames when no frame of the batch is present
            (otherwise it sees a copy of a present row). None: zeros. Their tokens are replaced by
            the null token either way; the row only has to keep ``encode`` finite.
    """

    kind: ClassVar[str] = "condition"
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    requires: ClassVar[frozenset[str]] = frozenset()
    required_methods: ClassVar[tuple[str, ...]] = ("extract", "encode")
    column_docs: ClassVar[tuple[Column, ...]] = ()
    labels: ClassVar[Mapping[str, str]] = {}
    value_examples: ClassVar[Mapping[str, str]] = {}
    absent_fill: ClassVar[tuple[float, ...] | None] = None

    def __init__(self, d_model: int, options: Any = None, *, slots: int, signal_dim: int) -> None:
        super().__init__()
        if slots < 1 or signal_dim < 1:
            raise ValueError(f"{type(self).__name__}: slots and signal_dim must be >= 1")
        self.d_model = int(d_model)
        self.options = options if options is not None else self.Options()
        self.slots = int(slots)
        self.signal_dim = int(signal_dim)
        self.lookahead_frames = 0
        self.columns: list[str] = [f"{self.name}_{i}" for i in range(self.signal_dim)]
        # Learned null embedding: what the backbone sees when this control is absent.
        self.null_token = nn.Parameter(torch.randn(self.slots, self.d_model) * 0.02)  # (slots, D)

    # -- the three operations every plugin implements --------------------------------------
    def extract(self, sample: Sample) -> torch.Tensor:
        """Per-frame signal ``(T, signal_dim)`` float32 from a training sample; NaN rows = absent."""
        raise NotImplementedError

    def encode(self, signal: torch.Tensor) -> torch.Tensor:
        """Frame-local tokenizer ``(B, T, signal_dim) -> (B, T, slots, d_model)``."""
        raise NotImplementedError

    def forward(self, signal: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens with the null token at absent frames.

        Args:
            signal: ``(B, T, signal_dim)``; NaN rows count as absent.
            present: ``(B, T)`` bool, or None for "present wherever the row is finite".

        Returns:
            ``(B, T, slots, d_model)``.
        """
        if signal.dim() != 3 or signal.shape[-1] != self.signal_dim:
            raise ValueError(
                f"condition {self.name!r}: expected a signal of shape (B, T, {self.signal_dim}), "
                f"got {tuple(signal.shape)}"
            )
        finite = torch.isfinite(signal).all(dim=-1)  # (B, T)
        present = finite if present is None else (present.bool() & finite)
        clean = self.fill_absent(signal, present)  # absent rows: a present row (or absent_fill)
        tokens = self.encode(clean.to(self.null_token.dtype))  # (B, T, slots, D)
        check_tokens(self, tokens, tuple(signal.shape[:2]))
        null = self.null_token.to(tokens.dtype).expand_as(tokens)
        return torch.where(present[..., None, None], tokens, null)

    def fill_absent(self, signal: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """What ``encode`` sees: absent rows replaced by the batch's first present row, or by
        ``absent_fill`` (zeros by default) when no row is present. Their tokens become the null
        token, so the fill only keeps ``encode`` away from NaN and out-of-domain inputs (a ``log``
        of 0, say), which would otherwise send NaN gradients back through ``torch.where``."""
        flat = signal.reshape(-1, signal.shape[-1])  # (B*T, D)
        mask = present.reshape(-1)
        first = flat[mask.to(torch.uint8).argmax()]  # (D,) first present row (any row if none)
        fill = self.absent_fill
        default = (torch.zeros(signal.shape[-1], dtype=signal.dtype, device=signal.device) if fill is None
                   else torch.as_tensor(fill, dtype=signal.dtype, device=signal.device).expand(signal.shape[-1]))
        row = torch.where(mask.any() & torch.isfinite(first).all(), first, default)
        row = torch.nan_to_num(row)
        return torch.where(present[..., None], torch.nan_to_num(signal), row.expand_as(signal))

    # -- inference-time values ----------------------------------------------------------------
    def values(self, value: Any, num_frames: int | None = None) -> torch.Tensor:
        """Turn a user value into a signal ``(num_frames, signal_dim)`` (NaN rows = absent).

        Accepted values: None (absent everywhere); a number, list or 1-D array (constant over
        frames); a ``(T, signal_dim)`` array or tensor (shorter ones are absent past their end);
        a mapping (see :meth:`parse_mapping`); a label string (see :meth:`parse_label`); a path to
        ``.npy``/``.csv``/``.json`` values, to a driving video, or to an audio file.

        With ``num_frames=None`` the value keeps its natural length: a constant comes back as one
        row ``(signal_dim,)``, per-frame values (arrays, files, videos, audio) as ``(L, signal_dim)``.
        """
        if value is None:
            shape = (self.signal_dim,) if num_frames is None else (num_frames, self.signal_dim)
            return torch.full(shape, float("nan"))
        if isinstance(value, (str, Path)):
            text = str(value)
            path = Path(text).expanduser()
            suffix = path.suffix.lower()
            if suffix in ARRAY_SUFFIXES | VIDEO_SUFFIXES | AUDIO_SUFFIXES:
                if not path.is_file():
                    raise InputError(f"condition {self.name!r}: value file {path} does not exist")
                if suffix in VIDEO_SUFFIXES:
                    return self._fit(self.from_video(path, num_frames), num_frames, str(path))
                if suffix in AUDIO_SUFFIXES:
                    return self._fit(self.from_audio(path, num_frames), num_frames, str(path))
                return self._fit(self._load_array_file(path), num_frames, str(path))
            return self._fit(self.parse_label(text), num_frames, repr(text))
        if isinstance(value, Mapping):
            return self._fit(self.parse_mapping(value), num_frames, "mapping")
        array = torch.as_tensor(np.asarray(value, dtype=np.float32))
        return self._fit(array, num_frames, "array")

    def parse_label(self, label: str) -> torch.Tensor:
        """A text value (e.g. ``"happy"``). Plugins with named values override this."""
        raise InputError(
            f"condition {self.name!r} does not take text values (got {label!r}); give a number, "
            "an array, or a path to a .npy/.csv/.json file"
        )

    def parse_mapping(self, mapping: Mapping[str, Any]) -> torch.Tensor:
        """A mapping of column name to value (constant) or list (per frame)."""
        unknown = set(mapping) - set(self.columns)
        if unknown:
            raise InputError(
                f"condition {self.name!r}: unknown value keys {sorted(unknown)}; known: {self.columns}"
            )
        lengths = {len(v) for v in mapping.values() if isinstance(v, Sequence) and not isinstance(v, str)}
        length = max(lengths) if lengths else None
        rows = 1 if length is None else length
        out = torch.full((rows, self.signal_dim), float("nan"))
        for i, col in enumerate(self.columns):
            if col in mapping:
                out[:, i] = torch.as_tensor(mapping[col], dtype=torch.float32)
        return out if length is not None else out[0]

    def from_video(self, path: Path, num_frames: int | None) -> torch.Tensor:
        """Signal re-extracted from a driving video (face pipeline + :meth:`extract`); a constant
        ``(signal_dim,)`` row is also accepted. ``num_frames=None``: the whole video."""
        from eartalk.core.media.io import load_sample  # local: media pulls in PyAV and MediaPipe

        sample = load_sample(path, need_face="face" in self.requires, num_frames=num_frames)
        return self.extract(sample)

    def from_audio(self, path: Path, num_frames: int | None) -> torch.Tensor:
        """Signal from an audio file (only audio-driven plugins accept this); None: its whole length."""
        if "audio" not in self.requires:
            raise InputError(f"condition {self.name!r} cannot take its values from audio file {path}")
        from eartalk.core.media.io import read_audio

        audio = read_audio(path)
        return self.extract(Sample(audio=audio, num_frames=num_frames))

    # -- helpers --------------------------------------------------------------------------------
    def _load_array_file(self, path: Path) -> torch.Tensor:
        suffix = path.suffix.lower()
        try:
            if suffix == ".npy":
                return torch.as_tensor(np.load(path, allow_pickle=False), dtype=torch.float32)
            if suffix == ".json":
                data = json.loads(path.read_text())
                if isinstance(data, Mapping):
                    return self.parse_mapping(data)
                return torch.as_tensor(np.asarray(data, dtype=np.float32))
            with path.open(newline="") as handle:
                rows = list(csv.reader(handle))
        except (OSError, ValueError) as err:
            raise InputError(f"condition {self.name!r}: cannot read values from {path}: {err}") from err
        if not rows:
            raise InputError(f"condition {self.name!r}: {path} is empty")
        header = rows[0]
        if all(cell.strip() in self.columns for cell in header):
            body = rows[1:]
            columns = {name.strip(): [float(r[i]) if r[i].strip() else float("nan") for r in body]
                       for i, name in enumerate(header)}
            return self.parse_mapping(columns)
        try:
            return torch.tensor([[float(c) if c.strip() else float("nan") for c in r] for r in rows])
        except ValueError as err:
            raise InputError(
                f"condition {self.name!r}: {path} has a non-numeric cell ({err}); use a header row "
                f"naming columns from {self.columns} or numbers only"
            ) from err

    def _fit(self, array: torch.Tensor, num_frames: int | None, what: str) -> torch.Tensor:
        """Broadcast a constant or trim/pad a per-frame array to ``(num_frames, signal_dim)``
        (``num_frames=None``: checked, but kept at its natural length)."""
        array = array.to(torch.float32)
        if array.dim() == 0:
            array = array.reshape(1)
        if array.dim() == 1:
            if array.shape[0] != self.signal_dim:
                raise InputError(
                    f"condition {self.name!r}: a constant needs {self.signal_dim} values "
                    f"({', '.join(self.columns)}), got {array.shape[0]} from {what}"
                )
            return array.clone() if num_frames is None else array.expand(num_frames, -1).clone()
        if array.dim() != 2 or array.shape[1] != self.signal_dim:
            raise InputError(
                f"condition {self.name!r}: per-frame values must have shape (T, {self.signal_dim}), "
                f"got {tuple(array.shape)} from {what}"
            )
        if num_frames is None:
            return array
        out = torch.full((num_frames, self.signal_dim), float("nan"))
        n = min(num_frames, array.shape[0])
        out[:n] = array[:n]
        return out

    def explain(self, value: Any, start: int = 0, stop: int | None = None) -> str:
        """One line saying what a user value does (printed by ``generate`` for every control).

        ``None`` ("off") is spelled out: the control is absent, the backbone sees the learned null
        token, which is the same as not giving the control at all on those frames.
        """
        span = f"frames {start}-{'end' if stop is None else stop - 1}"
        if value is None:
            return (f"{self.name}=off on {span}: absent (the learned null token): the model does what it learnt "
                    f"to do without a {self.name} control, the same as not giving {self.name} at all there")
        signal = self.values(value)
        if signal.dim() == 1:
            shown = ", ".join(f"{c}={_num(float(v)) if v == v else 'absent'}"
                              for c, v in list(zip(self.columns, signal.tolist(), strict=True))[:8])
            more = f", ... ({len(self.columns)} columns)" if len(self.columns) > 8 else ""
            return f"{self.name}={value!r} on {span}: constant {shown}{more}"
        return f"{self.name}: per-frame values from {value if isinstance(value, (str, Path)) else 'an array'} " \
               f"({signal.shape[0]} rows) from frame {start}"

    def extra_repr(self) -> str:
        return f"name={self.name!r}, slots={self.slots}, signal_dim={self.signal_dim}"


def check_tokens(plugin: ConditionPlugin, tokens: Any, batch_frames: tuple[int, int]) -> None:
    """The protocol check of ``encode``'s output: a float tensor ``(B, T, slots, d_model)``.

    Raises:
        PluginError: naming the plugin, what was expected and what came instead.
    """
    batch, frames = batch_frames
    expected = (batch, frames, plugin.slots, plugin.d_model)
    where = f"condition plugin {plugin.name!r} ({type(plugin).__module__}.{type(plugin).__qualname__}): encode()"
    if not isinstance(tokens, torch.Tensor):
        raise PluginError(f"{where} must return a tensor of shape {expected}, got {type(tokens).__name__}")
    if tuple(tokens.shape) != expected:
        hint = ""
        if tokens.dim() == 3 and tuple(tokens.shape[:2]) == (batch, frames):
            hint = (f"; the slots dimension is missing: reshape to (B, T, slots={plugin.slots}, d_model={plugin.d_model}),"
                    " e.g. tokens[:, :, None] for one slot")
        raise PluginError(f"{where} must return shape (B, T, slots, d_model) = {expected}, "
                          f"got {tuple(tokens.shape)}{hint}")
    if not tokens.is_floating_point():
        raise PluginError(f"{where} must return floating-point tokens, got dtype {tokens.dtype}")


def _value_forms(plugin: ConditionPlugin) -> list[tuple[str, str]]:
    """(form, meaning) pairs every value of this plugin can take: its own (labels, examples) first,
    then the protocol's generic forms, ``off`` last."""
    name, cols = plugin.name, plugin.columns
    shown = cols if len(cols) <= 6 else [*cols[:3], "...", cols[-1]]
    forms: list[tuple[str, str]] = []
    for label, meaning in plugin.labels.items():
        forms.append((f"{name}={label}", meaning))
    for example, meaning in plugin.value_examples.items():
        forms.append((example if example.startswith(f"{name}=") else f"{name}={example}", meaning))
    neutral = getattr(plugin, "neutral", None)
    if len(cols) <= 8:
        if neutral and len(neutral) == len(cols):
            values = list(neutral)
        else:
            docs = {c.name: c for c in type(plugin).column_docs}
            values = [(docs[c].range[0] if c in docs and docs[c].range and docs[c].range[0] is not None else 0.0)
                      for c in cols]
        row = ",".join(_num(v) for v in values)
        forms.append((f"{name}={row}", f"a constant row ({', '.join(cols)})" + (" (here: the neutral value)" if neutral else "")))
    if "audio" not in plugin.requires and not any("{" in form for form, _ in forms):
        forms.append((f"{name}='{{\"{cols[0]}\": 0.5}}'", "a JSON mapping of column names (constant, or a list per frame)"
                      + ("; columns left out take their neutral value" if neutral else "")))
    forms.append((f"{name}=values.csv|.json|.npy", f"per-frame values, one row per frame (CSV header: {','.join(shown)})"))
    if type(plugin).from_video is not ConditionPlugin.from_video or plugin.requires & {"face", "frames"}:
        forms.append((f"{name}=driving.mp4", "re-extracted from a driving video"))
    if "audio" in plugin.requires:
        forms.append((f"{name}=speech.wav", "computed from an audio file (generate uses --audio by default)"))
    forms.append((f"{name}=off", "absent: the learned null token (same as not giving it)"))
    return forms


@attrs.frozen
class PluginDoc:
    """Everything help says about one condition plugin (see :func:`describe_plugin`)."""

    name: str
    description: str
    requires: tuple[str, ...]
    slots: int
    signal_dim: int
    lookahead_frames: int
    columns: tuple[Column, ...]
    forms: tuple[tuple[str, str], ...]
    options: tuple[OptionDoc, ...]

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self, recurse=True)

    def column_summary(self, limit: int = 8) -> str:
        """``yaw (degrees, [-90, 90]), pitch ...`` for tables."""
        parts = []
        for col in self.columns[:limit]:
            extra = ", ".join(x for x in (col.unit, col.range_text()) if x)
            parts.append(f"{col.name} ({extra})" if extra else col.name)
        if len(self.columns) > limit:
            parts.append("...")
        return ", ".join(parts)

    def render(self) -> str:
        """Plain-text help (``eartalk plugins show NAME``)."""
        lines = [f"{self.name}: {self.description}" if self.description else self.name,
                 f"  slots {self.slots}, signal_dim {self.signal_dim}, lookahead {self.lookahead_frames} frame(s)"
                 + (f", requires {', '.join(self.requires)}" if self.requires else ""), "", "  columns:"]
        for col in self.columns[:60]:
            extra = ", ".join(x for x in (col.unit, col.range_text()) if x)
            lines.append(f"    {col.name}" + (f" ({extra})" if extra else "") + (f": {col.meaning}" if col.meaning else ""))
        lines += ["", "  values (--control NAME=VALUE[@START:STOP]):"]
        lines += [f"    {form}\n        {meaning}" for form, meaning in self.forms]
        if self.options:
            lines += ["", "  options (config: conditions: - name: ... options: {...}):"]
            for opt in self.options:
                extra = "; ".join(x for x in (f"default {_render(opt.default)}", opt.allowed, opt.unit) if x)
                lines.append(f"    {opt.name} ({extra})" + (f": {opt.help}" if opt.help else ""))
        return "\n".join(lines) + "\n"


def describe_plugin(plugin_or_class: ConditionPlugin | type[ConditionPlugin], options: Any = None) -> PluginDoc:
    """Self-description of a condition plugin, built from what it declares (works for any plugin).

    Columns come from the instance's ``columns`` matched against ``column_docs``; value forms from
    the protocol's generic forms plus ``labels`` and ``value_examples``; options from the
    ``Options`` fields (:func:`option` help, else the ``Attributes:`` docstring).
    """
    plugin = plugin_or_class if isinstance(plugin_or_class, ConditionPlugin) else plugin_or_class(d_model=8, options=options)
    docs = {c.name: c for c in type(plugin).column_docs}
    fallback = docs.get("*")
    columns = []
    for name in plugin.columns:
        doc = docs.get(name) or (attrs.evolve(fallback, name=name) if fallback else Column(name))
        columns.append(doc)
    return PluginDoc(
        name=plugin.name,
        description=type(plugin).description,
        requires=tuple(sorted(type(plugin).requires)),
        slots=plugin.slots,
        signal_dim=plugin.signal_dim,
        lookahead_frames=int(plugin.lookahead_frames),
        columns=tuple(columns),
        forms=tuple(_value_forms(plugin)),
        options=tuple(describe_options(type(plugin).Options)),
    )
