"""Safe YAML loading that remembers where each value came from, so schema
errors can name file:line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from harness.errors import ConfigError

JsonPath = tuple[str | int, ...]


@dataclass(frozen=True)
class LoadedYaml:
    path: Path
    data: Any
    lines: dict[JsonPath, int]

    def line_of(self, where: JsonPath) -> int:
        """Line of the deepest node on `where` that we have a mark for."""
        for n in range(len(where), -1, -1):
            if where[:n] in self.lines:
                return self.lines[where[:n]]
        return 1


def _index_lines(node: yaml.Node, where: JsonPath, out: dict[JsonPath, int]) -> None:
    out[where] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            _index_lines(value_node, (*where, str(key_node.value)), out)
            out[(*where, str(key_node.value))] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_lines(item, (*where, i), out)


def load_yaml(path: Path) -> LoadedYaml:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 1
        raise ConfigError(f"{path}:{line}: invalid YAML: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    finally:
        loader.dispose()
    lines: dict[JsonPath, int] = {}
    if node is not None:
        _index_lines(node, (), lines)
    return LoadedYaml(path=path, data=data, lines=lines)


def validate(doc: LoadedYaml, schema: dict[str, Any]) -> None:
    """Raise ConfigError for the first schema violation, with file:line."""
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(doc.data), key=lambda e: list(map(str, e.path)))
    if not errors:
        return
    # best_match picks the most relevant error among anyOf/oneOf branches.
    err = jsonschema.exceptions.best_match(errors) or errors[0]
    where = tuple(err.absolute_path)
    field = ".".join(str(p) for p in where) or "(top level)"
    raise ConfigError(f"{doc.path}:{doc.line_of(where)}: {field}: {err.message}")
