"""Load and validate a model spec from YAML.

Every error names the file, the line and column, and what was expected. YAML
is composed (not just loaded) so that each mapping key and list item keeps its
position. A cell may be an op list or an ONNX file (`{onnx: path}`, relative to
the spec), imported by `onnx_cell`.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping
from pathlib import Path

from ..errors import InputError, LimitError, SpecError, UsageError
from ..inputs import read_input_bytes, read_input_text
from ..yaml_input import NAME as _NAME, Checker, Node, compose
from .cells import OpLine, eval_dim_text, parse_cell
from .model import INITS, ModelSpec, ParamSpec, RoleSpec, Source, VocabSpec
from .ops import SET_REDUCTIONS, set_reduction_program
from .program import Program, Shape
from .structure import ANY, KINDS, KindDef, RoleDef, readout_role

# The model's name names its policy files (`plans/<model>.op.policy.json`), so it must fit a file name.
_MAX_MODEL_NAME = 100
_TOP_KEYS = ("model", "seed", "dims", "vocab", "params", "cells", "structure", "readout")
_VOCAB_BUILDS = ("frequency", "hash")


def _compose(text: str, path: str | None) -> Node | None:
    return compose(text, path, SpecError, "spec", "a model spec")


class _Checker(Checker):
    """The shared checks raising `SpecError`, and a spec's dimensions and shapes."""

    def __init__(self, path: str | None):
        super().__init__(path, SpecError)

    def dim(self, node: Node, dims: dict[str, int], what: str, least: int = 1) -> int:
        try:
            value = eval_dim_text(node.value, dims)
        except ValueError as e:
            raise self.fail(node, f"{what}: {e}") from None
        if value < least:
            raise self.fail(node, f"{what} must be {'positive' if least == 1 else f'at least {least}'}, got {value}")
        return value

    def shape(self, node: Node, dims: dict[str, int], what: str) -> Shape:
        items = self.sequence(node, what)
        if not items:
            raise self.fail(node, f"{what} must list at least one dimension")
        return tuple(self.dim(i, dims, what) for i in items)


def load_model(path: str | Path) -> ModelSpec:
    """Read and validate a model spec file."""
    return parse_model(read_input_text(path, "model spec", SpecError), str(path))


def parse_model(text: str, path: str | None = None, files: Mapping[str, bytes] | None = None,
                dims: Mapping[str, int] | None = None) -> ModelSpec:
    """Parse and validate a model spec.

    Files the spec refers to (ONNX cells) are read relative to `path`'s folder,
    or, when `files` is given, taken from it by the path written in the spec
    (how a plan, which embeds them, loads its spec). `dims` overrides dimensions
    of the spec's `dims:` (`edbc train --set dims.vocab=20000`); later dimensions
    that use them follow.
    """
    overrides = dict(dims or {})
    c = _Checker(path)
    root = _compose(text, path)
    if root is None:
        raise SpecError("the model spec is empty", path=path)
    top = c.mapping(root, "the model spec", _TOP_KEYS,
                    ("model", "dims", "params", "cells", "structure", "readout"))
    name = c.name(top["model"], "model")
    if len(name) > _MAX_MODEL_NAME:
        raise c.fail(top["model"], f"model: the name has {len(name)} characters; at most {_MAX_MODEL_NAME} "
                                   "(it names the model's policy files)")
    seed = c.integer(top["seed"], "seed", 0) if "seed" in top else 0

    dims: dict[str, int] = {}
    for key, node in c.mapping(top["dims"], "dims").items():
        c.name(Node(key, node.line, node.column), "a dimension name")
        # A dimension may be 0 (a dropout percent, say); the sizes made from dimensions must be positive.
        dims[key] = overrides.pop(key) if key in overrides else c.dim(node, dims, f"dims.{key}", least=0)
    if overrides:
        raise UsageError(f"--set dims.{next(iter(overrides))}: the spec has no such dimension; its dimensions are: "
                         f"{', '.join(dims)}", path=path)

    params = _params(c, top["params"], dims, seed)
    param_shapes = {k: p.shape for k, p in params.items()}
    cells: dict[str, Program] = {}
    used_files: dict[str, bytes] = {}
    for key, node in c.mapping(top["cells"], "cells").items():
        if isinstance(node.value, dict) and "onnx" in node.value:
            cells[key], cell_params, rel, data = _onnx_cell(c, key, node, dims, files)
            params.update(cell_params)  # named `<cell>.<initializer>`: they cannot clash with YAML names
            used_files[rel] = data
        else:
            cells[key] = _cell(c, key, node, dims, param_shapes)

    struct = c.mapping(top["structure"], "structure", required=("kind",))
    kind_name = struct["kind"].value
    if kind_name not in KINDS:
        raise c.fail(struct["kind"], f"structure.kind: unknown kind {kind_name!r}; "
                                     f"expected one of: {', '.join(KINDS)}")
    kind = KINDS[kind_name]
    roles: dict[str, RoleSpec] = {}
    role_nodes: dict[str, Node] = {}
    for key, node in struct.items():
        if key == "kind":
            continue
        role_def = kind.role(key)
        if role_def is None or key == "readout":
            raise c.fail(node, f"structure: {kind.name} has no role '{key}'; expected: {kind.role_names()}")
        roles[key] = _role(c, key, node, role_def, cells)
        role_nodes[key] = node
    for group in kind.required:
        if not any(r in roles for r in group):
            need = f"role '{group[0]}'" if len(group) == 1 else f"one of the roles {', '.join(group)}"
            raise c.fail(top["structure"], f"structure: the {kind.name} kind needs {need}")
    if not roles:
        raise c.fail(top["structure"], f"structure: no roles; a {kind.name} needs at least one")
    node = top["readout"]
    fields = c.mapping(node, "readout", ("cell", "at", "bind"), ("cell", "at", "bind"))
    at = fields["at"].value
    if at not in dict(kind.readout_at):
        raise c.fail(fields["at"], f"readout.at: {at!r} is not a place of a {kind.name}; expected "
                                   f"one of: {', '.join(a for a, _ in kind.readout_at)}")
    roles["readout"] = _role(c, "readout", node, readout_role(kind, at), cells, at)
    if len(cells[roles["readout"].cell].outputs) != 1:
        raise c.fail(fields["cell"], "readout: the readout cell must have exactly one output")
    role_nodes["readout"] = node
    for role_name, role in roles.items():
        _check_neighbors(c, role_name, role, role_nodes[role_name], kind, roles, cells, at_role=role.at)
    # Each reduced set is a node of its own type (`assemble` makes the nodes); one type per reduction and shape.
    for role in roles.values():
        for value, source in zip(cells[role.cell].inputs, role.bind):
            if source.kind == "set":
                program = set_reduction_program(source.reduce, value.shape)
                cells.setdefault(program.name, program)

    vocabs = _vocabs(c, top.get("vocab"), dims, roles, cells, params, root)
    return ModelSpec(name=name, path=path, seed=seed, dims=dims, vocabs=vocabs, params=params,
                     cells=cells, kind=kind.name, roles=roles, files=used_files)


def _params(c: _Checker, node: Node, dims: dict[str, int], seed: int) -> dict[str, ParamSpec]:
    out: dict[str, ParamSpec] = {}
    for key, pnode in c.mapping(node, "params").items():
        c.name(Node(key, pnode.line, pnode.column), "a parameter name")
        if key in dims:
            raise c.fail(pnode, f"parameter '{key}' has the name of a dimension")
        f = c.mapping(pnode, f"params.{key}", ("shape", "init", "std", "scale", "seed"), ("shape",))
        shape = c.shape(f["shape"], dims, f"params.{key}.shape")
        # Defaults as torch.nn.Linear's: Glorot for matrices, U(+-1/sqrt(n)) for vectors.
        init = f["init"].value if "init" in f else ("xavier" if len(shape) >= 2 else "uniform")
        if init not in INITS:
            raise c.fail(f["init"], f"params.{key}.init: unknown initialiser {init!r}; "
                                    f"expected one of: {', '.join(INITS)}")
        scale = None
        for k in ("std", "scale"):
            if k in f:
                if not isinstance(f[k].value, (int, float)) or isinstance(f[k].value, bool):
                    raise c.fail(f[k], f"params.{key}.{k} must be a number")
                scale = float(f[k].value)
        if init == "uniform" and scale is None and "init" not in f:
            scale = 1.0 / shape[0] ** 0.5
        if init in ("normal", "uniform") and scale is None:
            raise c.fail(pnode, f"params.{key}: init {init} needs "
                                f"{'std' if init == 'normal' else 'scale'}")
        # Each parameter draws from its own stream, so adding one leaves the others unchanged.
        pseed = c.integer(f["seed"], f"params.{key}.seed", 0) if "seed" in f \
            else (seed * 1_000_003 + zlib.crc32(key.encode())) % (2 ** 63)
        out[key] = ParamSpec(key, shape, init, scale, pseed)
    return out


def _cell_inputs(c: _Checker, name: str, node: Node, dims: dict[str, int]) -> list[tuple[str, Shape | None]]:
    inputs: list[tuple[str, Shape | None]] = []
    for key, inode in c.mapping(node, f"cells.{name}.inputs").items():
        c.name(Node(key, inode.line, inode.column), f"cells.{name}.inputs: an input name")
        if inode.value == "token":
            inputs.append((key, None))
        elif isinstance(inode.value, list):
            inputs.append((key, c.shape(inode, dims, f"cells.{name}.inputs.{key}")))
        else:
            raise c.fail(inode, f"cells.{name}.inputs.{key} must be `token` or a shape such as [hidden]")
    return inputs


def _cell(c: _Checker, name: str, node: Node, dims: dict[str, int],
          params: dict[str, Shape]) -> Program:
    c.name(Node(name, node.line, node.column), "a cell name")
    f = c.mapping(node, f"cells.{name}", ("inputs", "ops", "outputs"), ("inputs", "ops", "outputs"))
    inputs = _cell_inputs(c, name, f["inputs"], dims)
    lines = []
    for item in c.sequence(f["ops"], f"cells.{name}.ops"):
        if not isinstance(item.value, str):
            raise c.fail(item, f"cells.{name}.ops: each op is a line such as `h = tanh(x)`")
        lines.append(OpLine(item.value, item.line, item.column))
    outputs = [(c.name(o, f"cells.{name}.outputs: an output"), OpLine(o.value, o.line, o.column))
               for o in c.sequence(f["outputs"], f"cells.{name}.outputs")]
    return parse_cell(name, inputs, lines, outputs, params, dims, c.path)


def _onnx_cell(c: _Checker, name: str, node: Node, dims: dict[str, int],
               files: Mapping[str, bytes] | None) -> tuple[Program, dict[str, ParamSpec], str, bytes]:
    """A cell given as an ONNX file; `inputs:` and `outputs:`, if given, must match its graph."""
    c.name(Node(name, node.line, node.column), "a cell name")
    f = c.mapping(node, f"cells.{name}", ("onnx", "inputs", "outputs"))
    where = f["onnx"]
    rel = where.value
    if not isinstance(rel, str) or not rel.strip():
        raise c.fail(where, f"cells.{name}.onnx must be the path of an .onnx file, relative to the spec")
    if files is not None:
        if rel not in files:
            raise c.fail(where, f"cells.{name}.onnx: '{rel}' is not among the files given with the spec "
                                f"({', '.join(sorted(files)) or 'none'})")
        data, label = files[rel], f"{rel} (given with {c.path})" if c.path else rel
    else:
        full = (Path(c.path).parent if c.path else Path(".")) / rel
        try:
            data = read_input_bytes(full, "", SpecError)
        except LimitError:
            raise
        except InputError as e:
            raise c.fail(where, f"cells.{name}.onnx: {e.message} ('{full}': the path is relative to the "
                                f"spec's folder)") from None
        label = str(full)
    from .onnx_cell import import_onnx_cell  # onnx is imported only by specs that need it

    imported = import_onnx_cell(name, data, label)
    program = imported.program
    if "inputs" in f:
        declared = _cell_inputs(c, name, f["inputs"], dims)
        actual = [(v.name, None if v.dtype == "token" else v.shape) for v in program.inputs]
        if sorted(declared, key=str) != sorted(actual, key=str):
            raise c.fail(f["inputs"], f"cells.{name}.inputs do not match the ONNX graph's inputs: "
                                      f"{_format_inputs(actual)}")
    if "outputs" in f:
        declared_out = [c.name(o, f"cells.{name}.outputs: an output")
                        for o in c.sequence(f["outputs"], f"cells.{name}.outputs")]
        actual_out = [program.values[v].name for v in program.outputs]
        if sorted(declared_out) != sorted(actual_out):
            raise c.fail(f["outputs"], f"cells.{name}.outputs do not match the ONNX graph's outputs: "
                                       f"{', '.join(actual_out)}")
    return program, imported.params, rel, data


def _format_inputs(inputs: list[tuple[str, Shape | None]]) -> str:
    return ", ".join(f"{n}: {'token' if s is None else list(s)}" for n, s in inputs)


_SET_BINDING = re.compile(r"\s*([A-Za-z_]\w*)\(\s*([A-Za-z_]\w*)\.([A-Za-z_]\w*)\s*\)\s*\Z")


def _role(c: _Checker, role: str, node: Node, role_def: RoleDef, cells: dict[str, Program],
          at: str | None = None) -> RoleSpec:
    what = "readout" if role == "readout" else f"structure.{role}"
    f = c.mapping(node, what, ("cell", "bind", "at") if role == "readout" else ("cell", "bind"),
                  ("cell", "bind"))
    cell_name = f["cell"].value
    if cell_name not in cells:
        raise c.fail(f["cell"], f"{what}.cell: unknown cell {cell_name!r}; expected one of: "
                                f"{', '.join(cells) or '(no cells)'}")
    program = cells[cell_name]
    binds = c.mapping(f["bind"], f"{what}.bind")
    sources = []
    for value in program.inputs:
        if value.name not in binds:
            raise c.fail(f["bind"], f"{what}.bind: cell '{cell_name}' input '{value.name}' is not bound")
    for key, snode in binds.items():
        if key not in [v.name for v in program.inputs]:
            raise c.fail(snode, f"{what}.bind: cell '{cell_name}' has no input '{key}'; its inputs are: "
                                f"{', '.join(v.name for v in program.inputs)}")
    for value in program.inputs:
        snode = binds[value.name]
        text = snode.value
        if not isinstance(text, str):
            raise c.fail(snode, f"{what}.bind.{value.name} must be a token field or `neighbour.output`")
        reduced = _SET_BINDING.match(text)
        if reduced is not None:
            how, ref, output = reduced.groups()
            if role_def.set_roles(ref) is None:
                sets = ", ".join(n for n, _ in role_def.sets) or "none here"
                raise c.fail(snode, f"{what}.bind.{value.name}: {ref!r} is not a set of neighbours of "
                                    f"{role}; expected one of: {sets}")
            if how not in SET_REDUCTIONS:
                raise c.fail(snode, f"{what}.bind.{value.name}: unknown set reduction {how!r}; expected "
                                    f"one of: {', '.join(SET_REDUCTIONS)}")
            if value.dtype != "f32":
                raise c.fail(snode, f"{what}.bind.{value.name}: a token input cannot read a set")
            sources.append(Source("set", ref, output, how))
            continue
        ref, _, output = text.partition(".")
        if output and role_def.set_roles(ref) is not None:
            raise c.fail(snode, f"{what}.bind.{value.name}: {ref!r} is a set of nodes; reduce it to one "
                                f"vector: {' or '.join(f'{h}({text})' for h in SET_REDUCTIONS)}")
        if output:
            if role_def.neighbor_roles(ref) is None:
                raise c.fail(snode, f"{what}.bind.{value.name}: {ref!r} is not a neighbour of "
                                    f"{role}; expected one of: {role_def.describe_neighbors()}")
            if value.dtype != "f32":
                raise c.fail(snode, f"{what}.bind.{value.name}: a token input must be bound to a "
                                    f"token field ({', '.join(role_def.tokens) or 'none here'})")
            sources.append(Source("state", ref, output))
        else:
            if not role_def.accepts_token(ref) or not _NAME.match(ref):
                raise c.fail(snode, f"{what}.bind.{value.name}: {ref!r} is not a token field of "
                                    f"{role}; expected one of: {', '.join(role_def.tokens) or '(none)'}"
                                    f", or `neighbour.output`")
            if value.dtype == "f32":
                raise c.fail(snode, f"{what}.bind.{value.name}: input '{value.name}' is a float "
                                    f"vector but {ref!r} gives token ids")
            sources.append(Source("token", ref))
    return RoleSpec(role, cell_name, tuple(sources), at)


def _check_neighbors(c: _Checker, role: str, spec: RoleSpec, node: Node, kind: KindDef,
                     roles: dict[str, RoleSpec], cells: dict[str, Program], at_role: str | None) -> None:
    """Every role that can fill a neighbour must have the bound output, with the input's shape.

    Neighbours filled by any role (a DAG's arguments) are checked per instance instead.
    """
    role_def = readout_role(kind, at_role) if role == "readout" else kind.role(role)
    program = cells[spec.cell]
    binds = node.value["bind"].value
    for value, source in zip(program.inputs, spec.bind):
        if source.kind == "token":
            continue
        fillers = role_def.set_roles(source.ref) if source.kind == "set" else role_def.neighbor_roles(source.ref)
        if ANY in fillers:
            continue
        where = binds[value.name]
        who = f"a member of {source.ref}" if source.kind == "set" else source.ref
        present = [f for f in fillers if f in roles]
        if not present:
            raise c.fail(where, f"bind.{value.name}: {who} would be {_a(' or '.join(fillers))} node, "
                                f"but the model has no such role")
        for filler in present:
            other = cells[roles[filler].cell]
            slot = other.output_slot(source.output)
            if slot is None:
                raise c.fail(where, f"bind.{value.name}: {who} may be {_a(filler)} node, whose cell "
                                    f"'{other.name}' has no output '{source.output}'; its outputs are: "
                                    f"{', '.join(other.values[v].name for v in other.outputs)}")
            if other.output_shapes[slot] != value.shape:
                raise c.fail(where, f"bind.{value.name}: shape mismatch: input '{value.name}' of cell "
                                    f"'{program.name}' is {list(value.shape)} but output "
                                    f"'{source.output}' of cell '{other.name}' is "
                                    f"{list(other.output_shapes[slot])}")


def _a(noun: str) -> str:
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def _vocabs(c: _Checker, node: Node | None, dims: dict[str, int], roles: dict[str, RoleSpec],
            cells: dict[str, Program], params: dict[str, ParamSpec], root: Node) -> dict[str, VocabSpec]:
    entries = c.mapping(node, "vocab") if node is not None else {}
    vocabs: dict[str, VocabSpec] = {}
    for key, vnode in entries.items():
        f = c.mapping(vnode, f"vocab.{key}", ("size", "build"), ("size",))
        size = c.dim(f["size"], dims, f"vocab.{key}.size")
        if size < 2:
            raise c.fail(f["size"], f"vocab.{key}.size must be at least 2 (id 0 is the unknown word)")
        build = f["build"].value if "build" in f else "frequency"
        if build not in _VOCAB_BUILDS:
            raise c.fail(f["build"], f"vocab.{key}.build: expected one of: {', '.join(_VOCAB_BUILDS)}")
        vocabs[key] = VocabSpec(key, size, build)
    for role in roles.values():
        program = cells[role.cell]
        for value_id, source in enumerate(role.bind):
            if source.kind != "token":
                continue
            if source.ref not in vocabs:
                raise c.fail(node or root, f"vocab: token field '{source.ref}' (read by cell "
                                           f"'{program.name}') needs an entry `{source.ref}: {{size: N}}`")
            size = vocabs[source.ref].size
            for op in program.ops:
                if op.kind == "embed" and op.args[1] == value_id:
                    rows = params[op.args[0]].shape[0]
                    if rows < size:
                        raise c.fail(node or root, f"vocab.{source.ref}: {size} ids but embedding "
                                                   f"table '{op.args[0]}' of cell '{program.name}' "
                                                   f"has only {rows} rows")
    return vocabs
