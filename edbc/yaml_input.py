"""Positioned, bounded YAML for the files users write: model specs and weight mappings.

`compose` turns YAML text into `Node`s that keep their line and column, so that
every later check can point at the value it refuses; `Checker` holds the checks
the readers share (a mapping with known keys, a list, a name, an integer), each
raising the reader's own error class at the node's position. YAML is composed
with PyYAML's safe loader, never constructed into Python objects beyond plain
scalars, and bounded: aliases may not expand past `MAX_YAML_VALUES` values nor
nest past `MAX_YAML_DEPTH` levels ("billion laughs", or an alias inside
itself), and integers must fit an int64.
"""

from __future__ import annotations

import re

import yaml

from .errors import InputError, quoted
from .inputs import MAX_INT, out_of_memory

# A spec or mapping is a few hundred YAML values; plans re-parse their spec here too.
MAX_YAML_VALUES = 50_000  # after aliases are expanded
MAX_YAML_DEPTH = 64
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")  # what `Checker.name` accepts


class Node:
    """A composed YAML value with its position (1-based line and column). A mapping's value is
    a dict of key -> `Node`, a list's a list of `Node`s, a scalar's the Python scalar."""

    __slots__ = ("value", "line", "column")

    def __init__(self, value, line: int, column: int):
        self.value = value
        self.line = line
        self.column = column


def compose(text: str, path: str | None, error: type[InputError] = InputError, document: str = "file",
            needs: str = "a file of this kind") -> Node | None:
    """The document in `text` as `Node`s, None when it is empty. Errors are `error` at the
    offending position; `document` ("spec") and `needs` ("a model spec") name the file in them."""
    loader = _BoundedLoader(text, path, error, needs)
    try:
        root = loader.get_single_node()
    except MemoryError:
        raise out_of_memory(path) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise _error_at(error, mark, f"YAML syntax error: {problem}", path) from None
    finally:
        loader.dispose()
    return None if root is None else _Converter(loader, path, error, document, needs).convert(root)


def _error_at(error: type[InputError], mark: yaml.Mark | None, message: str, path: str | None) -> InputError:
    return error(message, path=path, line=mark.line + 1 if mark else None,
                 column=mark.column + 1 if mark else None)


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader whose composer refuses nesting deeper than `MAX_YAML_DEPTH` (PyYAML's composer
    recurses, so deep nesting would exhaust the stack) and whose integers fit an int64."""

    def __init__(self, text: str, path: str | None, error: type[InputError], needs: str):
        super().__init__(text)
        self.path = path
        self.error = error
        self.needs = needs
        self.depth = 0

    def compose_node(self, parent, index):
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                raise _error_at(self.error, self.peek_event().start_mark, f"YAML nested more than "
                                f"{MAX_YAML_DEPTH} levels deep; {self.needs} needs a few", self.path)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_int64(self, node: yaml.ScalarNode) -> int:
        # Checked before conversion: Python refuses ints of more than 4300 digits.
        value = None if sum(ch.isdigit() for ch in node.value) > 19 else self.construct_yaml_int(node)
        if value is None or abs(value) > MAX_INT:
            raise _error_at(self.error, node.start_mark, f"integer {quoted(node.value)} is out of range; "
                            f"expected at most {MAX_INT}", self.path)
        return value


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_int64)


class _Converter:
    """Composed YAML nodes to `Node`s. Aliases are expanded, within `MAX_YAML_VALUES` values and
    `MAX_YAML_DEPTH` levels: an alias may repeat a large value many times, or contain itself."""

    def __init__(self, loader: yaml.SafeLoader, path: str | None, error: type[InputError], document: str,
                 needs: str):
        self.loader = loader
        self.path = path
        self.error = error
        self.document = document
        self.needs = needs
        self.values_left = MAX_YAML_VALUES

    def fail(self, node: yaml.Node, message: str) -> InputError:
        return _error_at(self.error, node.start_mark, message, self.path)

    def convert(self, node: yaml.Node, depth: int = 1) -> Node:
        self.values_left -= 1
        if self.values_left < 0:
            raise self.fail(node, f"the {self.document} expands to more than {MAX_YAML_VALUES} YAML values "
                                  f"(aliases repeat values); {self.needs} needs far fewer")
        if depth > MAX_YAML_DEPTH:
            raise self.fail(node, f"YAML nested more than {MAX_YAML_DEPTH} levels deep once aliases are "
                                  f"expanded (an alias inside itself?); {self.needs} needs a few")
        line, col = node.start_mark.line + 1, node.start_mark.column + 1
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Node] = {}
            for k, v in node.value:
                key = self.convert(k, depth + 1)
                if not isinstance(key.value, (str, int)):
                    raise self.error("mapping keys must be plain names", path=self.path,
                                     line=key.line, column=key.column)
                name = str(key.value)
                if name in out:
                    raise self.error(f"key '{quoted(name)}' appears twice in this mapping", path=self.path,
                                     line=key.line, column=key.column)
                out[name] = self.convert(v, depth + 1)
            return Node(out, line, col)
        if isinstance(node, yaml.SequenceNode):
            return Node([self.convert(v, depth + 1) for v in node.value], line, col)
        try:
            return Node(self.loader.construct_object(node, deep=True), line, col)
        except (yaml.YAMLError, ValueError) as e:  # ValueError: a timestamp such as 2001-02-30
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise self.fail(node, f"bad YAML value '{quoted(node.value)}': {problem}") from None


def shown(value) -> str:
    """A YAML value as an error shows it: short text quoted, containers by kind, never a Python repr."""
    if isinstance(value, str):
        return f"'{quoted(value)}'"
    if isinstance(value, (bool, int, float)):
        return quoted(str(value))
    if value is None:
        return "nothing"
    return {list: "a list", dict: "a mapping"}.get(type(value), f"a YAML {type(value).__name__}")


class Checker:
    """Validation helpers that raise `error` at a node's position in `path`."""

    def __init__(self, path: str | None, error: type[InputError] = InputError):
        self.path = path
        self.error = error

    def fail(self, node: Node | None, message: str) -> InputError:
        return self.error(message, path=self.path,
                          line=node.line if node else None, column=node.column if node else None)

    def mapping(self, node: Node, what: str, allowed: tuple[str, ...] | None = None,
                required: tuple[str, ...] = ()) -> dict[str, Node]:
        if not isinstance(node.value, dict):
            raise self.fail(node, f"{what} must be a mapping")
        if allowed is not None:
            for key, v in node.value.items():
                if key not in allowed:
                    raise self.fail(v, f"{what}: unknown key '{key}'; expected one of: {', '.join(allowed)}")
        for key in required:
            if key not in node.value:
                raise self.fail(node, f"{what}: missing key '{key}'")
        return node.value

    def sequence(self, node: Node, what: str) -> list[Node]:
        if not isinstance(node.value, list):
            raise self.fail(node, f"{what} must be a list")
        return node.value

    def name(self, node: Node, what: str) -> str:
        if not isinstance(node.value, str) or not NAME.match(node.value):
            raise self.fail(node, f"{what} must be a name (letters, digits, _), got {shown(node.value)}")
        return node.value

    def integer(self, node: Node, what: str, minimum: int | None = None) -> int:
        if type(node.value) is not int:
            raise self.fail(node, f"{what} must be an integer, got {shown(node.value)}")
        if minimum is not None and node.value < minimum:
            raise self.fail(node, f"{what} must be at least {minimum}, got {node.value}")
        return node.value
