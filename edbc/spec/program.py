"""The cell IR: a `Program` is a static subgraph of primitive ops.

Values are numbered; the first `n_inputs` are the program's inputs in declared
order. An op argument is an `int` (a value id) or a `str` (a parameter name):
parameters are shared by every call, values have a leading batch dimension at
run time. Shapes never include the batch dimension.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Union

Shape = tuple[int, ...]
Arg = Union[int, str]

F32 = "f32"
TOKEN = "token"


@dataclass(frozen=True, slots=True)
class Value:
    name: str
    shape: Shape
    dtype: str = F32  # F32, or TOKEN for an integer id (shape ())


@dataclass(frozen=True, slots=True)
class Op:
    kind: str
    args: tuple[Arg, ...]
    outs: tuple[int, ...]
    attrs: tuple[tuple[str, object], ...] = ()

    def attr(self, name: str):
        for key, value in self.attrs:
            if key == name:
                return value
        raise KeyError(name)

    def params(self) -> tuple[str, ...]:
        return tuple(a for a in self.args if isinstance(a, str))


@dataclass(frozen=True, slots=True)
class Program:
    name: str
    values: tuple[Value, ...]
    n_inputs: int
    ops: tuple[Op, ...]
    outputs: tuple[int, ...]

    @property
    def inputs(self) -> tuple[Value, ...]:
        return self.values[: self.n_inputs]

    @property
    def float_inputs(self) -> tuple[int, ...]:
        """Input value ids fed by other nodes' outputs (the graph's arguments)."""
        return tuple(i for i in range(self.n_inputs) if self.values[i].dtype == F32)

    @property
    def token_inputs(self) -> tuple[int, ...]:
        """Input value ids fed by token ids (the graph's immediates)."""
        return tuple(i for i in range(self.n_inputs) if self.values[i].dtype == TOKEN)

    @property
    def output_shapes(self) -> tuple[Shape, ...]:
        return tuple(self.values[v].shape for v in self.outputs)

    def output_slot(self, name: str) -> int | None:
        for slot, v in enumerate(self.outputs):
            if self.values[v].name == name:
                return slot
        return None

    def params(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for op in self.ops:
            for p in op.params():
                seen.setdefault(p)
        return tuple(seen)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "values": [[v.name, list(v.shape), v.dtype] for v in self.values],
            "n_inputs": self.n_inputs,
            "ops": [{"kind": op.kind, "args": list(op.args), "outs": list(op.outs),
                     "attrs": {k: _jsonable(a) for k, a in op.attrs}} for op in self.ops],
            "outputs": list(self.outputs),
        }

    @staticmethod
    def from_json(data) -> "Program":
        """The program `to_json` wrote; a field of the wrong JSON type or out of range raises
        `ValueError` naming it (a bool is not an integer, a string not a list)."""
        def need(ok: bool, what: str):
            if not ok:
                raise ValueError(f"a program's {what} is malformed")

        def ints(value, what: str, low: int, high: int) -> tuple[int, ...]:
            need(type(value) is list and all(type(v) is int and low <= v < high for v in value), what)
            return tuple(value)

        need(type(data) is dict, "record")
        need(type(data.get("name")) is str, "name")
        values_json = data.get("values")
        need(type(values_json) is list, "values")
        values = []
        for v in values_json:
            need(type(v) is list and len(v) == 3 and type(v[0]) is str and v[2] in (F32, TOKEN), "value")
            values.append(Value(v[0], ints(v[1], "value shape", 1, 2**31), v[2]))
        n = len(values)
        need(type(data.get("n_inputs")) is int and 0 <= data["n_inputs"] <= n, "n_inputs")
        need(type(data.get("ops")) is list, "ops")
        ops = []
        for o in data["ops"]:
            need(type(o) is dict and type(o.get("kind")) is str and type(o.get("args")) is list
                 and type(o.get("attrs")) is dict, "op")
            need(all(type(a) is str or (type(a) is int and 0 <= a < n) for a in o["args"]), "op argument")
            attrs = []
            for k, a in sorted(o["attrs"].items()):
                need(type(a) is int or (type(a) is list and all(type(x) is int for x in a)), "op attribute")
                attrs.append((k, _frozen(a)))
            ops.append(Op(o["kind"], tuple(o["args"]), ints(o.get("outs"), "op outputs", 0, n), tuple(attrs)))
        return Program(data["name"], tuple(values), data["n_inputs"], tuple(ops),
                       ints(data.get("outputs"), "outputs", 0, n))


def affine_terms(args: tuple[Arg, ...]) -> tuple[list[tuple[Arg, Arg]], Arg | None]:
    """An affine's `x @ W` pairs and its bias (None when it has none): the one place that
    decodes the affine argument layout `x1, W1, x2, W2, ..., bias?`."""
    has_bias = len(args) % 2
    pairs = [(args[i], args[i + 1]) for i in range(0, len(args) - has_bias, 2)]
    return pairs, (args[-1] if has_bias else None)


def value_uses(ops: Iterable[Op], outputs: Iterable[int]) -> Counter:
    """How often each value is read: as an op argument, or as a program output."""
    uses = Counter(a for op in ops for a in op.args if not isinstance(a, str))
    uses.update(outputs)
    return uses


def live_ops(ops: Iterable[Op], outputs: Iterable[int]) -> list[Op]:
    """The ops some output depends on, in their order (dead-code removal)."""
    needed = set(outputs)
    kept = []
    for op in reversed(list(ops)):
        if needed.intersection(op.outs):
            kept.append(op)
            needed.update(a for a in op.args if not isinstance(a, str))
    kept.reverse()
    return kept


def _jsonable(attr):
    return list(attr) if isinstance(attr, tuple) else attr


def _frozen(attr):
    return tuple(attr) if isinstance(attr, list) else attr


def format_shape(value: Value) -> str:
    if value.dtype == TOKEN:
        return "token"
    return f"{value.dtype}[{','.join(map(str, value.shape))}]"


def format_program(program: Program) -> str:
    """The printer of the cell IR, in the spec's own op syntax. It also prints broken programs
    (for the verifier's messages): a value id out of range shows as `%<id>?`."""

    def known(v) -> bool:
        return isinstance(v, int) and 0 <= v < len(program.values)

    def name(arg: Arg) -> str:
        return arg if isinstance(arg, str) else program.values[arg].name if known(arg) else f"%{arg}?"

    def typed(v) -> str:
        return f"{name(v)}: {format_shape(program.values[v])}" if known(v) else name(v)

    ins = ", ".join(f"{v.name}: {format_shape(v)}" for v in program.inputs)
    outs = ", ".join(typed(v) for v in program.outputs)
    lines = [f"cell {program.name}({ins}) -> ({outs})"]
    for op in program.ops:
        if op.kind == "affine":
            pairs, bias = affine_terms(op.args)
            args = [f"{name(x)} @ {name(w)}" for x, w in pairs] + ([name(bias)] if bias is not None else [])
        else:
            args = [name(a) for a in op.args]
        args += [f"{k}={_jsonable(a)}" for k, a in op.attrs]
        targets = ", ".join(name(v) for v in op.outs)
        shapes = ", ".join(format_shape(program.values[v]) if known(v) else "?" for v in op.outs)
        lines.append(f"  {targets} = {op.kind}({', '.join(args)})  : {shapes}")
    return "\n".join(lines)
