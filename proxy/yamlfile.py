"""YAML whose errors name the file, the line and the key: shared by the main config and the policy loader.

PyYAML reads the text into nodes that remember their line; msgspec converts and validates the plain data;
a failure's path (`$.trunks[1].role`) is mapped back to the line of that key. Nothing here knows what the
settings mean: `proxy.config` and `policies.loader` bring their own schemas.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
import yaml

__all__ = ["ConfigError", "YamlDoc", "compose", "key_text"]


class ConfigError(Exception):
    """A configuration problem, located: `file:line: key: what is wrong`."""

    def __init__(self, file: str, line: int | None, key: str, problem: str) -> None:
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {key}: {problem}")
        self.file = file
        self.line = line
        self.key = key
        self.problem = problem


_LOADER = yaml.SafeLoader("")
_PATH_RE = re.compile(r" - at `(\$[^`]*)`$")
_UNKNOWN_RE = re.compile(r"^Object contains unknown field `([^`]*)`")


def key_text(path: str) -> str:
    """`$.trunks[1].role` -> `trunks[1].role`, the way errors show a key."""
    return path[2:] if path.startswith("$.") else path


class YamlDoc:
    """A parsed YAML document: its plain data and the line of every key path, to locate errors."""

    __slots__ = ("data", "file", "lines")

    def __init__(self, data: Any, lines: dict[str, int], file: str) -> None:
        self.data = data
        self.lines = lines
        self.file = file

    def line_for(self, path: str) -> int | None:
        """The line of `path`, or of its nearest enclosing key that has one."""
        lines = self.lines
        while path:
            if path in lines:
                return lines[path]
            cut = max(path.rfind("."), path.rfind("["))
            if cut <= 0:
                break
            path = path[:cut]
        return lines.get("$")

    def error(self, path: str, problem: str, error_type: type[ConfigError] = ConfigError) -> ConfigError:
        """A located error for the key at `path` (`$.a.b[2]`)."""
        return error_type(self.file, self.line_for(path), key_text(path), problem)

    def validation_error(self, exc: msgspec.ValidationError, root: str = "$",
                         error_type: type[ConfigError] = ConfigError) -> ConfigError:
        """Map msgspec's `... - at `$.x[0].y`` to the key's line; `root` re-roots a value converted alone."""
        message = str(exc)
        path = "$"
        m = _PATH_RE.search(message)
        if m:
            path = m.group(1)
            message = message[: m.start()]
        u = _UNKNOWN_RE.match(message)
        if u:
            path = f"{path}.{u.group(1)}"
            message = "unknown key"
        return self.error(root + path[1:], message, error_type)


def _to_python(node: yaml.Node, path: str, lines: dict[str, int]) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _LOADER.construct_object(key_node, deep=True)
            sub = f"{path}.{key}"
            lines[sub] = key_node.start_mark.line + 1
            out[key] = _to_python(value_node, sub, lines)
            lines[sub] = key_node.start_mark.line + 1  # the key's own line, not its value's
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(v, f"{path}[{i}]", lines) for i, v in enumerate(node.value)]
    return _LOADER.construct_object(node, deep=True)


def compose(text: str, file: str) -> YamlDoc:
    """Parse `text` (named `file` in errors); a YAML syntax error is a located ConfigError."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(file, line, "(yaml)", str(getattr(exc, "problem", exc))) from None
    lines: dict[str, int] = {}
    if node is None:
        return YamlDoc({}, lines, file)
    return YamlDoc(_to_python(node, "$", lines), lines, file)
