"""Strict configuration: frozen attrs classes structured from YAML by one converter.

* An unknown key is an error naming the key, where it is, and the file.
* Values are type-checked (an ``int`` field refuses ``"abc"``, ``1.5`` and ``true``).
* ``key=value`` overrides use dotted paths (``train.lr=3e-4``, ``conditions.0.options.lookahead=3``);
  values are parsed as YAML scalars and type-checked like the file.
* :func:`save_resolved` writes the resolved config next to a run's outputs.
"""

from __future__ import annotations

import copy
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs
import cattrs
import yaml
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from eartalk.core.errors import ConfigError, did_you_mean

T = TypeVar("T")


def _strict_scalar(kind: type) -> Any:
    def structure(value: Any, _type: Any) -> Any:
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if kind is float and isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        if not ok:
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
        return value

    return structure


def make_converter() -> cattrs.Converter:
    """The one converter: extra keys forbidden, scalars checked strictly."""
    conv = cattrs.Converter(forbid_extra_keys=True)
    for kind in (int, float, bool, str):
        conv.register_structure_hook(kind, _strict_scalar(kind))
    conv.register_structure_hook(Path, lambda v, _: Path(_strict_scalar(str)(v, str)))
    conv.register_unstructure_hook(Path, str)
    conv.register_structure_hook(typing.Any, lambda v, _: v)
    conv.register_structure_hook_func(_is_multi_union, lambda v, tp: _structure_union(conv, v, tp))
    return conv


def _is_multi_union(tp: Any) -> bool:
    """A union of two or more non-None types (``int | str | list[int]``); plain ``X | None`` is cattrs' own."""
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return False
    return len([a for a in typing.get_args(tp) if a is not type(None)]) > 1


def _structure_union(conv: cattrs.Converter, value: Any, tp: Any) -> Any:
    """The first member of the union (in declaration order) that takes ``value`` strictly."""
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    names = []
    for arg in args:
        if arg is type(None):
            continue
        names.append(getattr(arg, "__name__", str(arg)))
        try:
            return conv.structure(value, arg)
        except Exception:  # noqa: BLE001 - try the next member
            continue
    raise TypeError(f"expected one of {' | '.join(names)}, got {type(value).__name__} {value!r}")


converter = make_converter()


def _describe(exc: BaseException, path: str = "") -> list[str]:
    """Flatten a cattrs exception group into ``"where: what"`` lines."""
    lines: list[str] = []
    if isinstance(exc, ForbiddenExtraKeysError):
        fields = [f.name for f in attrs.fields(exc.cl)] if attrs.has(exc.cl) else []
        for key in sorted(exc.extra_fields):
            where = f"{path}.{key}" if path else key
            lines.append(f"unknown key {where!r}{did_you_mean(key, fields)}; allowed here: {', '.join(fields)}")
        return lines
    if isinstance(exc, (ClassValidationError, IterableValidationError)):
        for sub in exc.exceptions:
            notes = getattr(sub, "__notes__", []) or []
            name = ""
            for note in notes:
                text = str(note)
                if text.startswith("Structuring class ") and "@ attribute " in text:
                    name = text.split("@ attribute ", 1)[1].strip()
                elif text.startswith("Structuring ") and "@ index " in text:
                    name = text.rsplit("@ index ", 1)[1].strip()
            sub_path = f"{path}.{name}" if (path and name) else (name or path)
            lines.extend(_describe(sub, sub_path))
        return lines
    if isinstance(exc, KeyError):
        return [f"missing required key {path!r}" if path else f"missing required key {exc}"]
    key = getattr(exc, "key", None)  # eartalk.core.protocol.OptionError: a validator naming its option
    if isinstance(key, str) and key:
        path = path if path.endswith(key) else (f"{path}.{key}" if path else key)
        return [f"{path}: {str(exc).removeprefix(f'option {key!r} ')}"]
    return [f"{path or '<root>'}: {exc}"]


def structure(data: Any, cls: type[T], *, source: str = "<config>") -> T:
    """Structure plain data into ``cls`` with the strict converter.

    Raises:
        ConfigError: naming every unknown key, missing key or mistyped value and ``source``.
    """
    if data is None:
        data = {}
    if attrs.has(cls) and not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    try:
        return converter.structure(data, cls)
    except (ClassValidationError, IterableValidationError, ForbiddenExtraKeysError) as exc:
        problems = _describe(exc)
        raise ConfigError(f"{source}: invalid config:\n  - " + "\n  - ".join(problems)) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: invalid config: {exc}") from None


def unstructure(obj: Any) -> Any:
    """Plain data (dicts, lists, scalars) for an attrs config object."""
    return converter.unstructure(obj)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with clear errors for missing, unreadable or non-mapping files."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into a key path and a YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. train.lr=3e-4)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str], cls: type | None = None) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted ``key=value`` overrides applied.

    When ``cls`` is given, a key that is not a field of the schema is an error naming the override
    (so a typo on the command line is caught even where the file left a default).
    """
    data = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = data
        schema: Any = cls
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                    raise ConfigError(f"override {text!r}: {part!r} is not an index of a list of {len(node)}")
                idx = int(part)
                schema = _list_item(schema)
                if last:
                    node[idx] = value
                else:
                    node = node[idx]
                continue
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(parts[:i])!r} is not a mapping")
            if schema is not None and attrs.has(schema):
                names = [f.name for f in attrs.fields(schema)]
                if part not in names:
                    raise ConfigError(
                        f"override {text!r}: unknown key {part!r}{did_you_mean(part, names)}; allowed: {', '.join(names)}"
                    )
                schema = _field_type(schema, part)
            else:
                schema = None
            if last:
                node[part] = value
            else:
                child = node.get(part)
                if child is None:
                    child = node[part] = {}
                node = child
    return data


def _field_type(cls: type, name: str) -> Any:
    hints = typing.get_type_hints(cls)
    return _unwrap_optional(hints.get(name))


def _unwrap_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else None
    return tp


def _list_item(tp: Any) -> Any:
    args = typing.get_args(tp) if tp is not None else ()
    return _unwrap_optional(args[0]) if args else None


def load_config(path: str | Path, cls: type[T], overrides: Sequence[str] = ()) -> T:
    """Load ``path`` into ``cls`` with overrides; errors name the file."""
    data = load_yaml(path)
    data = apply_overrides(data, overrides, cls)
    return structure(data, cls, source=str(path))


def to_yaml(obj: Any) -> str:
    """YAML text of a config object (keys in field order)."""
    return yaml.safe_dump(unstructure(obj), sort_keys=False, default_flow_style=False)


def save_resolved(obj: Any, out_dir: str | Path, name: str = "config.resolved.yaml") -> Path:
    """Write the resolved config next to a run's outputs and return its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    path.write_text(to_yaml(obj))
    return path
