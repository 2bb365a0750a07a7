"""The YAML loader of the run configs (:mod:`jaxglmm.io.config`): PyYAML's safe loader with a
repeated key refused and the labels under ``levels`` kept as written."""
from __future__ import annotations

import re

import yaml

__all__ = ["ConfigLoader", "RepeatedKey"]

_STR, _MERGE = "tag:yaml.org,2002:str", "tag:yaml.org,2002:merge"
# What YAML 1.2's core schema (unlike YAML 1.1) reads as a boolean or a number: a level
# written so keeps that type, to match a boolean or numeric column as before (``1.0`` is the
# label "1" of a float column); anything else (no, yes, on, off, y, 010, 1_000) is text.
_CORE_12 = {"tag:yaml.org,2002:bool": re.compile(r"true|True|TRUE|false|False|FALSE"),
            "tag:yaml.org,2002:int": re.compile(r"[-+]?(0|[1-9][0-9]*)"),
            "tag:yaml.org,2002:float": re.compile(
                r"[-+]?(\.[0-9]+|[0-9]+\.[0-9]*|[0-9]+(?=[eE]))([eE][-+]?[0-9]+)?")}


class RepeatedKey(Exception):
    def __init__(self, key: str, first: int, second: int):
        where = f"line {first}" if first == second else f"lines {first} and {second}"
        super().__init__(f"key {key!r} appears twice ({where})")


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader for run configs: a key repeated in one mapping (at any depth) is
    an error instead of the last one silently winning, and under ``levels`` the column
    names and the level labels keep the text they were written with (YAML 1.1 would read
    ``[no, yes]`` as booleans, ``[on, off]`` too); see ``_CORE_12`` for what stays a number
    or a boolean there."""

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _refuse_repeated_keys(node, (), set())
            if isinstance(node, yaml.MappingNode):
                for key, value in node.value:
                    if isinstance(key, yaml.ScalarNode) and key.value == "levels":
                        _levels_as_written(value)
        return node


# PyYAML (YAML 1.1) reads 1e-3 and 1.0e+5 as strings (its floats need a dot and an exponent
# sign); YAML 1.2 reads them as numbers, as a learning rate is usually written.
ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def _levels_as_written(node) -> None:
    if not isinstance(node, yaml.MappingNode):
        return
    for column, labels in node.value:
        if isinstance(column, yaml.ScalarNode):
            column.tag = _STR
        for label in labels.value if isinstance(labels, yaml.SequenceNode) else [labels]:
            if isinstance(label, yaml.ScalarNode) and label.style is None:   # plain, unquoted
                label.tag = next((tag for tag, form in _CORE_12.items()
                                  if form.fullmatch(label.value)), _STR)


def _refuse_repeated_keys(node, path: tuple[str, ...], done: set) -> None:
    if id(node) in done:   # an alias of a node already checked
        return
    done.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines: dict[tuple[str, str], int] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE:
                continue
            line, ident = key.start_mark.line + 1, (key.tag, key.value)
            if ident in lines:
                raise RepeatedKey(".".join(path + (key.value,)), lines[ident], line)
            lines[ident] = line
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else "?"
            _refuse_repeated_keys(value, path + (name,), done)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_repeated_keys(item, path + (str(i),), done)
