"""Read one YAML file into the typed settings of ``relaxd.settings``, strictly.

The loader walks the dataclasses field by field, so a new setting or a whole new
section in ``relaxd.settings`` needs no change here. It works on PyYAML's node tree
(``yaml.compose``) rather than on plain dicts because nodes remember their line:
every error names the file, the line, the key path (``camera.fps``) and what would
have been accepted. All errors of a file are collected and raised together as one
``ConfigValidationError``, so an operator fixes the file in one pass.

Rules: unknown keys are errors (with a "did you mean"); a missing key, a missing
section or an empty file mean the default; a section left empty (``camera:`` with
every key commented out) means its defaults too; ints are accepted for floats but
nothing else is coerced (``"30"`` is not a number, ``yes`` is not a boolean).

To support a new field type, add a branch to ``_convert`` (and a description to
``_describe_allowed``); ``Optional[...]`` and ``tuple[...]`` are the likely next ones.
"""

from __future__ import annotations

import dataclasses
import difflib
import textwrap
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from relaxd.errors import ConfigError
from relaxd.settings import Settings

__all__ = [
    "ConfigIssue",
    "ConfigValidationError",
    "changed_settings",
    "flatten_settings",
    "load_settings",
    "parse_settings",
    "render_example",
    "settings_to_yaml",
]


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config file: where it is and what is wrong."""

    source: str
    line: int  # 1-based, as editors show it
    key: str  # dotted key path, e.g. "camera.fps"; "" for the file as a whole
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigValidationError(ConfigError):
    """The file parsed as YAML, but one or more keys or values are wrong.

    ``issues`` lists every problem found, in file order.
    """

    def __init__(self, source: str, issues: list[ConfigIssue]) -> None:
        self.source = source
        self.issues = tuple(sorted(issues, key=lambda issue: issue.line))
        if len(self.issues) == 1:
            message = str(self.issues[0])
        else:
            lines = [f"{source}: {len(self.issues)} configuration errors:"]
            lines += [f"  {issue}" for issue in self.issues]
            message = "\n".join(lines)
        super().__init__(message)


class _Invalid(Exception):
    """A value failed a check; the message says what was expected."""


# --------------------------------------------------------------------------- loading


MAX_CONFIG_BYTES = 1 << 20


def load_settings(path: str | Path) -> Settings:
    """Read and validate the config file at ``path``.

    Raises ``ConfigError`` when the file is missing, unreadable, not YAML or not a
    mapping, and ``ConfigValidationError`` (a ``ConfigError``) listing every bad key
    or value.
    """
    path = Path(path)
    try:
        size = path.stat().st_size if path.is_file() else 0
        if size > MAX_CONFIG_BYTES:  # refuse before parsing: YAML on 50 MB took minutes and gigabytes
            raise ConfigError(f"config file {path} is {size / 1e6:.1f} MB; a relaxd config is a few KB "
                              f"(at most {MAX_CONFIG_BYTES // 1024} KB): check that this is the right file")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} not found: check the path, or start from deploy/relaxd.example.yaml"
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory; pass the YAML file itself") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file {path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror or error}") from None
    return parse_settings(text, str(path))


def parse_settings(text: str, source_name: str = "<string>") -> Settings:
    """Validate YAML ``text`` into ``Settings``; ``source_name`` names it in errors."""
    try:
        loader = yaml.SafeLoader(text)
        root = loader.get_single_node()
    except yaml.YAMLError as error:
        raise ConfigError(_yaml_error_message(error, source_name, text)) from None
    try:
        if root is None:  # empty file, or only comments
            return Settings()
        if not isinstance(root, yaml.MappingNode):
            raise ConfigError(
                f"{source_name}:{root.start_mark.line + 1}: the top level must be a mapping of sections "
                f"({', '.join(f.name + ':' for f in dataclasses.fields(Settings))}), "
                f"got {_node_kind(root, loader)}"
            )
        issues: list[ConfigIssue] = []
        settings = _load_dataclass(Settings, root, "", _Context(source_name, loader, issues))
    finally:
        loader.dispose()
    if issues:
        raise ConfigValidationError(source_name, issues)
    return settings


@dataclass
class _Context:
    """What the recursive walk carries along: where we are and what went wrong so far."""

    source: str
    loader: yaml.SafeLoader  # constructs scalar values the way yaml.safe_load would
    issues: list[ConfigIssue]

    def report(self, node: yaml.Node, key: str, message: str) -> None:
        self.issues.append(ConfigIssue(self.source, node.start_mark.line + 1, key, message))


def _load_dataclass(cls: type, node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Build ``cls`` from a mapping node; keys it does not set keep their defaults."""
    if _is_null(node):  # "camera:" with nothing under it
        return cls()
    if not isinstance(node, yaml.MappingNode):
        ctx.report(node, path, f"expected a mapping of settings, got {_node_kind(node, ctx.loader)}")
        return cls()
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    value_nodes: dict[str, yaml.Node] = {}
    first_line: dict[str, int] = {}
    for key_node, value_node in node.value:
        key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "<complex key>"
        key_path = f"{path}.{key}" if path else key
        if key in first_line:
            ctx.report(key_node, key_path, f"duplicate key (first set on line {first_line[key]})")
            continue
        first_line[key] = key_node.start_mark.line + 1
        field = fields.get(key)
        if field is None:
            ctx.report(key_node, key_path, _unknown_key_message(key, list(fields), is_section=not path))
            continue
        try:
            values[key] = _convert(hints[key], field, value_node, key_path, ctx)
            value_nodes[key] = value_node
        except _Invalid as error:
            ctx.report(value_node, key_path, str(error))
    built = cls(**values)
    for key, message in getattr(built, "problems", list)():  # rules across a section's fields
        ctx.report(value_nodes.get(key, node), f"{path}.{key}" if path else key, message)
    return built


def _convert(hint: Any, field: dataclasses.Field, node: yaml.Node, path: str, ctx: _Context) -> Any:
    """Turn one value node into a value of type ``hint``, or raise ``_Invalid``."""
    if dataclasses.is_dataclass(hint):
        return _load_dataclass(hint, node, path, ctx)
    if hint == tuple[str, ...]:
        return _convert_names(node, ctx)
    if hint not in (bool, int, float, str):
        raise TypeError(f"relaxd.config cannot load {path} of type {hint!r}; add it to _convert")
    expected = _describe_allowed(hint, field)
    if not isinstance(node, yaml.ScalarNode):
        raise _Invalid(f"expected {expected}, got {_node_kind(node, ctx.loader)}")
    value = _construct(node, ctx.loader)
    if hint is bool:
        # Only YAML 1.2 booleans: PyYAML also reads yes/no/on/off as booleans, a classic trap.
        if not isinstance(value, bool) or node.value.lower() not in ("true", "false"):
            raise _Invalid(f"expected {expected}, got {_node_kind(node, ctx.loader)}")
    elif hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Invalid(f"expected {expected}, got {_node_kind(node, ctx.loader)}")
    elif hint is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise _Invalid(f"expected {expected}, got {_node_kind(node, ctx.loader)}")
        value = float(value)
    elif not isinstance(value, str):  # hint is str
        hint_text = f"; quote it if you mean the text: '{node.value}'" if node.value else "; write \"\" for empty text"
        raise _Invalid(f"expected {expected}, got {_node_kind(node, ctx.loader)}{hint_text}")
    _check_constraints(value, node.value, field)
    return value


def _convert_names(node: yaml.Node, ctx: _Context) -> tuple[str, ...]:
    """A YAML list of names (``[angry, sad]``); empty or null is the empty list."""
    if _is_null(node):
        return ()
    if not isinstance(node, yaml.SequenceNode):
        raise _Invalid(f"expected a list of names such as [angry, sad], got {_node_kind(node, ctx.loader)}")
    names = []
    for item in node.value:
        value = _construct(item, ctx.loader) if isinstance(item, yaml.ScalarNode) else None
        if not isinstance(value, str) or not value.strip():
            raise _Invalid(f"expected a list of names such as [angry, sad], but an item is {_node_kind(item, ctx.loader)}")
        if value in names:
            raise _Invalid(f"{value!r} is listed twice")
        names.append(value)
    return tuple(names)


def _check_constraints(value: Any, written: str, field: dataclasses.Field) -> None:
    """Apply the ``range`` and ``choices`` metadata declared in ``relaxd.settings``."""
    if "range" in field.metadata:
        low, high = field.metadata["range"]
        if not low <= value <= high:  # also rejects .nan
            raise _Invalid(f"{written} is out of range; allowed: {low} to {high}")
    if "choices" in field.metadata:
        choices = tuple(field.metadata["choices"])
        if value not in choices:
            close = difflib.get_close_matches(str(value), choices, n=1)
            suggestion = f"; did you mean '{close[0]}'?" if close else ""
            raise _Invalid(f"{value!r} is not allowed; choose one of: {', '.join(choices)}{suggestion}")


def _unknown_key_message(key: str, known: list[str], is_section: bool) -> str:
    what = "section" if is_section else "key"
    close = difflib.get_close_matches(key, known, n=1)
    suggestion = f"did you mean '{close[0]}'? " if close else ""
    return f"unknown {what}; {suggestion}known {what}s: {', '.join(known)}"


def _construct(node: yaml.ScalarNode, loader: yaml.SafeLoader) -> Any:
    try:
        return loader.construct_object(node, deep=True)
    except yaml.MarkedYAMLError as error:  # e.g. an explicit !!python/... tag, refused by the safe loader
        raise _Invalid(f"cannot read value {node.value!r}: {error.problem}") from None
    except (yaml.YAMLError, ValueError) as error:  # e.g. an impossible !!timestamp
        raise _Invalid(f"cannot read value {node.value!r}: {error}") from None


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _node_kind(node: yaml.Node, loader: yaml.SafeLoader) -> str:
    """A short description of what the file holds at ``node``, for error messages."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if _is_null(node):
        return "an empty value (null)"
    try:
        value = loader.construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError):
        return f"{node.value!r}"
    kind = {bool: "boolean", int: "integer", float: "number", str: "text"}.get(type(value), type(value).__name__)
    return f"{kind} {node.value!r}"


def _yaml_error_message(error: yaml.YAMLError, source: str, text: str) -> str:
    if isinstance(error, yaml.reader.ReaderError):  # a character YAML does not allow; no mark, a position
        line = text.count("\n", 0, error.position) + 1
        return f"{source}:{line}: not valid YAML: unacceptable character #x{error.character:04x} ({error.reason})"
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    if mark is None:
        return f"{source}: not valid YAML: {error}"
    problem = getattr(error, "problem", None) or str(error)
    context = getattr(error, "context", None)
    detail = f"{context}, {problem}" if context else problem
    return f"{source}:{mark.line + 1}: not valid YAML at column {mark.column + 1}: {detail}"


# --------------------------------------------------------------------------- writing


def settings_to_yaml(settings: Any, *, comments: bool = True) -> str:
    """Render a settings dataclass as YAML that ``parse_settings`` reads back unchanged.

    With ``comments``, every key gets a comment line from its field metadata: what it
    does, what is allowed, and the default where the value differs from it.
    """
    lines: list[str] = []
    _emit(settings, 0, lines, comments)
    return "\n".join(lines) + "\n"


def render_example() -> str:
    """The documented example config: every key at its default, each with its comment.

    ``deploy/relaxd.example.yaml`` is this text (``relaxd example-config`` prints it).
    """
    header = (
        "# relaxd configuration: every key, each at its default value.\n"
        "# Every key is optional: a missing key or section takes the default shown here.\n"
        "# Unknown keys, wrong types and out-of-range values are errors.\n"
        "# Check a file with:   relaxd check-config FILE\n"
        "# Regenerate this one: relaxd example-config > deploy/relaxd.example.yaml\n"
    )
    return header + "\n" + settings_to_yaml(Settings())


def _emit(obj: Any, depth: int, lines: list[str], comments: bool) -> None:
    pad = "  " * depth
    hints = typing.get_type_hints(type(obj))
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if dataclasses.is_dataclass(value):
            if depth == 0 and lines:
                lines.append("")
            if comments and field.metadata.get("doc"):
                lines += _comment(field.metadata["doc"], pad)
            lines.append(f"{pad}{field.name}:")
            _emit(value, depth + 1, lines, comments)
            continue
        if comments:
            lines += _comment(_describe_field(hints[field.name], field, value), pad)
        if isinstance(value, tuple):  # a list of names, on one line: negative_labels: [angry, sad]
            listed = yaml.safe_dump(list(value), default_flow_style=True, allow_unicode=True, width=10_000)
            lines.append(f"{pad}{field.name}: {listed.strip()}")
            continue
        dumped = yaml.safe_dump({field.name: value}, sort_keys=False, allow_unicode=True, width=10_000)
        lines += [pad + line for line in dumped.splitlines()]


def _comment(text: str, pad: str) -> list[str]:
    return [f"{pad}# {line}" for line in textwrap.wrap(text, width=100 - len(pad) - 2)]


def _describe_field(hint: Any, field: dataclasses.Field, value: Any) -> str:
    doc = field.metadata.get("doc", "")
    allowed = _describe_allowed(hint, field)
    default = _field_default(field)
    differs = default is not dataclasses.MISSING and default != value
    suffix = f"{allowed}, default {default!r}" if differs else allowed
    return f"{doc} [{suffix}]" if doc else f"[{suffix}]"


def _describe_allowed(hint: Any, field: dataclasses.Field) -> str:
    """What a value must be, e.g. 'a number from 1.0 to 120.0' or 'one of: a, b'."""
    if "choices" in field.metadata:
        return "one of: " + ", ".join(field.metadata["choices"])
    kind = {bool: "true or false", int: "an integer", float: "a number", str: "text",
            tuple[str, ...]: "a list of names"}.get(hint, repr(hint))
    if "range" in field.metadata:
        low, high = field.metadata["range"]
        return f"{kind} from {low} to {high}"
    return kind


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


# --------------------------------------------------------------------------- inspecting


def flatten_settings(settings: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf value by dotted key path: ``{"camera.fps": 30.0, ...}``."""
    flat: dict[str, Any] = {}
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        key = f"{prefix}{field.name}"
        if dataclasses.is_dataclass(value):
            flat.update(flatten_settings(value, key + "."))
        else:
            flat[key] = value
    return flat


def changed_settings(settings: Settings) -> dict[str, Any]:
    """The leaf values that differ from the defaults, by dotted key path."""
    defaults = flatten_settings(Settings())
    return {key: value for key, value in flatten_settings(settings).items() if defaults.get(key) != value}
