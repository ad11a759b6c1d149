"""The cell IR: a `Program` is a static subgraph of primitive ops.

Values are numbered; the first `n_inputs` are the program's inputs in declared
order. An op argument is an `int` (a value id) or a `str` (a parameter name):
parameters are shared by every call, values have a leading batch dimension at
run time. Shapes never include the batch dimension.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

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
    def from_json(data: dict) -> "Program":
        return Program(
            name=data["name"],
            values=tuple(Value(n, tuple(s), d) for n, s, d in data["values"]),
            n_inputs=int(data["n_inputs"]),
            ops=tuple(Op(o["kind"], tuple(o["args"]), tuple(o["outs"]),
                         tuple((k, _frozen(a)) for k, a in sorted(o["attrs"].items())))
                      for o in data["ops"]),
            outputs=tuple(data["outputs"]),
        )


def _jsonable(attr):
    return list(attr) if isinstance(attr, tuple) else attr


def _frozen(attr):
    return tuple(attr) if isinstance(attr, list) else attr


def format_shape(value: Value) -> str:
    if value.dtype == TOKEN:
        return "token"
    return f"{value.dtype}[{','.join(map(str, value.shape))}]"


def format_program(program: Program) -> str:
    """The printer of the cell IR, in the spec's own op syntax."""

    def name(arg: Arg) -> str:
        return arg if isinstance(arg, str) else program.values[arg].name

    ins = ", ".join(f"{v.name}: {format_shape(v)}" for v in program.inputs)
    outs = ", ".join(f"{program.values[v].name}: {format_shape(program.values[v])}"
                     for v in program.outputs)
    lines = [f"cell {program.name}({ins}) -> ({outs})"]
    for op in program.ops:
        if op.kind == "affine":
            pairs = [f"{name(op.args[i])} @ {name(op.args[i + 1])}"
                     for i in range(0, len(op.args) - 1, 2)]
            args = pairs + ([name(op.args[-1])] if len(op.args) % 2 else [])
        else:
            args = [name(a) for a in op.args]
        args += [f"{k}={_jsonable(a)}" for k, a in op.attrs]
        targets = ", ".join(program.values[v].name for v in op.outs)
        shapes = ", ".join(format_shape(program.values[v]) for v in op.outs)
        lines.append(f"  {targets} = {op.kind}({', '.join(args)})  : {shapes}")
    return "\n".join(lines)
