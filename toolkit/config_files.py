"""Reading a run config file into plain data: YAML, TOML or JSON (by suffix; anything else is read as
YAML, as a run's own config.yaml is). A key written twice in one mapping is refused in every format
(PyYAML and json keep the last one silently; tomllib already refuses it), so a file never means
something other than what its first reader sees. Errors are InputErrors naming the file and line."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

from .errors import InputError

_MERGE_TAG = "tag:yaml.org,2002:merge"  # `<<: *anchor`: its keys may be overridden, that is its purpose


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that raises on a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"duplicate key {key!r} (first on line {seen[key]})", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader)


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _read_toml(path: Path, text: str) -> Any:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        problem = re.sub(r"\s*\(at .*\)$", "", str(exc))
        where = f"line {m[1]}" if m else f"line {max(1, len(text.splitlines()))} (end of file)"
        raise InputError(path, where, f"not valid TOML: {problem}" + (f" (column {m[2]})" if m else "")) from None


def _read_json(path: Path, text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_unique_pairs)
    except json.JSONDecodeError as exc:
        raise InputError(path, f"line {exc.lineno}", f"not valid JSON: {exc.msg} (column {exc.colno})") from None
    except ValueError as exc:  # a duplicate key: json gives no position for it
        raise InputError(path, None, f"not valid JSON: {exc}") from None


def _read_yaml(path: Path, text: str) -> Any:
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        where = f"line {mark.line + 1}" if mark is not None else None
        column = f" (column {mark.column + 1})" if mark is not None else ""
        raise InputError(path, where, f"not valid YAML: {problem}{column}") from None
    return {} if data is None else data


READERS = {".toml": _read_toml, ".json": _read_json}


def read_config_file(path: Path) -> dict[str, Any]:
    """The mapping in a config file; an InputError naming the file (and line) otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(path, None, f"cannot read config: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(path, None, "not UTF-8 text") from None
    data = READERS.get(path.suffix.lower(), _read_yaml)(path, text)
    if not isinstance(data, dict):
        raise InputError(path, None, "the top level must be a mapping of sections")
    return data


def parse_override_value(text: str) -> Any:
    """The value of a `key=value` override, as YAML (`[a, b]`, `{r: 8}`, `1e-4`); unparsable text stays text."""
    try:
        return load_yaml(text)
    except yaml.YAMLError:
        return text
