"""Importing PyTorch weights: a state_dict's tensors become a model spec's parameters.

    tensors = read_state_dict("model.pt")             # or model.safetensors
    mapping = read_mapping("configs/mappings/bilstm_tagger.yaml")
    weights = import_weights(spec, tensors, mapping, source="model.pt")

`read_state_dict` reads a `.safetensors` file, or anything else as a
`torch.save`d state_dict with torch's weights-only unpickler: a file that
would need code to be rebuilt is refused, and nothing in it runs.

A mapping file says where each parameter's values come from (a PyTorch
module names and lays out its tensors its own way: `nn.Linear` stores
[out, in], `nn.LSTM` stacks its gates i, f, g, o in rows):

    # torch.nn.LSTM (gates i, f, g, o) -> bilstm_tagger (gates i, f, o, u)
    params:
      E: embedding.weight                      # the tensor of that name, as it is
      Wf: {from: lstm.weight_ih_l0, chunks: 4, take: [0, 1, 3, 2], transpose: true}
      bf: {sum: [{from: lstm.bias_ih_l0, chunks: 4, take: [0, 1, 3, 2]},
                 {from: lstm.bias_hh_l0, chunks: 4, take: [0, 1, 3, 2]}]}
      O_f: {from: out.weight, dim: 1, chunks: 2, take: [0], transpose: true}
    ignore: [bn.num_batches_tracked, "*.running_var"]

`params` maps a parameter of the spec to a source expression: a tensor name,
or a mapping with exactly one of

- `from: NAME`: the tensor of that name;
- `sum: [EXPR, ...]`: the elementwise sum of expressions of one shape;
- `concat: [EXPR, ...]`: the expressions joined along `dim`;

and optional transforms, applied in this order:

1. `chunks: N, take: [K, ...]` (both or neither): cut dimension `dim` into N
   equal parts and join parts K, ... in the order listed (0-based; a part may
   be taken more than once);
2. `transpose: true`: swap the last two dimensions (a 1-D tensor cannot be).

`dim` (an integer, default 0, negative counting from the end) is the
dimension `concat` joins along and `chunks` cuts. Parameters the mapping does
not list are read from the tensor of their own name. `ignore` lists tensors
no parameter reads (`*` matches any characters); every other tensor must be
read by some parameter. Nothing in a mapping is evaluated as code.

Errors: a malformed mapping, or one naming a parameter the model lacks, is a
`MappingError` (exit 3) at its line and column; tensors that do not fit (a
tensor missing, extra, mis-shaped, not floating point or not finite; `chunks`
not dividing the dimension) are a `WeightsError` (exit 7) naming the tensor
and the parameter; a state_dict file that cannot be read safely is an
`ArtifactError` (exit 5).
"""

from __future__ import annotations

import difflib
import io
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ArtifactError, MappingError, WeightsError, quoted
from ..inputs import out_of_memory, read_input_bytes, read_input_text
from ..spec.model import ModelSpec
from ..yaml_input import Checker, Node, compose, shown

_EXPR_KEYS = ("from", "sum", "concat", "dim", "chunks", "take", "transpose")
_BASES = ("from", "sum", "concat")
_SHOWN_NAMES = 8  # tensor names an error lists before "and N more"
_SAVE_HINT = "save model.state_dict() itself: torch.save(model.state_dict(), path)"


# ---------------------------------------------------------------------------------------------
# The mapping

@dataclass(frozen=True, slots=True)
class Expr:
    """A source expression: where one parameter's values come from (see the module docstring)."""

    op: str  # "from" | "sum" | "concat"
    name: str | None = None  # the tensor, for "from"
    parts: tuple["Expr", ...] = ()  # for "sum" and "concat"
    dim: int = 0
    chunks: int | None = None
    take: tuple[int, ...] = ()
    transpose: bool = False
    line: int | None = field(default=None, compare=False)
    column: int | None = field(default=None, compare=False)

    @staticmethod
    def tensor(name: str) -> "Expr":
        return Expr("from", name)

    @property
    def plain(self) -> bool:
        """A tensor as it is, with no transform."""
        return self.op == "from" and self.chunks is None and not self.transpose

    def names(self) -> list[str]:
        """The tensors it reads, in order."""
        return [self.name] if self.op == "from" else [n for p in self.parts for n in p.names()]

    def __str__(self) -> str:
        """The expression as a mapping file writes it (flow style), for errors."""
        if self.plain:
            return self.name
        items = [f"from: {self.name}" if self.op == "from"
                 else f"{self.op}: [{', '.join(str(p) for p in self.parts)}]"]
        if self.dim:
            items.append(f"dim: {self.dim}")
        if self.chunks is not None:
            items += [f"chunks: {self.chunks}", f"take: [{', '.join(map(str, self.take))}]"]
        if self.transpose:
            items.append("transpose: true")
        return "{" + ", ".join(items) + "}"


@dataclass(frozen=True)
class Mapping:
    """A parsed mapping file: parameter -> source expression, and the tensors no parameter reads."""

    params: dict[str, Expr] = field(default_factory=dict)
    ignore: tuple[str, ...] = ()  # tensor names, `*` matching any characters
    path: str | None = None

    def ignores(self, tensor: str) -> bool:
        return any(_pattern(p).match(tensor) for p in self.ignore)


def _pattern(text: str) -> re.Pattern:
    return re.compile(".*".join(re.escape(part) for part in text.split("*")) + r"\Z", re.DOTALL)


def read_mapping(path: str | Path) -> Mapping:
    """Read and validate a mapping file (YAML)."""
    return parse_mapping(read_input_text(path, "mapping", MappingError), str(path))


def parse_mapping(text: str, path: str | None = None) -> Mapping:
    """Parse and validate a mapping; errors are `MappingError`s at their line and column."""
    c = Checker(path, MappingError)
    root = compose(text, path, MappingError, "mapping", "a weight mapping")
    if root is None:
        raise MappingError("the mapping is empty; expected `params:` (parameter: tensor) and/or `ignore:`",
                           path=path)
    top = c.mapping(root, "the mapping", ("params", "ignore"))
    params: dict[str, Expr] = {}
    if "params" in top:
        for key, node in c.mapping(top["params"], "params").items():
            params[key] = _expr(c, node, f"params.{key}")
    ignore: list[str] = []
    if "ignore" in top:
        for item in c.sequence(top["ignore"], "ignore"):
            ignore.append(_tensor_name(c, item, "ignore: each entry"))
    return Mapping(params, tuple(ignore), path)


def _tensor_name(c: Checker, node: Node, what: str) -> str:
    if not isinstance(node.value, str) or not node.value.strip():
        raise c.fail(node, f"{what} must be a tensor name such as lstm.weight_ih_l0, got {shown(node.value)}")
    return node.value


def _expr(c: Checker, node: Node, what: str) -> Expr:
    if isinstance(node.value, str):
        return Expr("from", _tensor_name(c, node, what), line=node.line, column=node.column)
    if not isinstance(node.value, dict):
        raise c.fail(node, f"{what} must be a tensor name, or a mapping with one of from, sum, concat; "
                           f"got {shown(node.value)}")
    f = c.mapping(node, what, _EXPR_KEYS)
    bases = [k for k in _BASES if k in f]
    if len(bases) != 1:
        raise c.fail(node, f"{what} needs exactly one of from, sum, concat; "
                           f"{'it has ' + ' and '.join(bases) if bases else 'it has none'}")
    op = bases[0]
    name, parts = None, ()
    if op == "from":
        name = _tensor_name(c, f["from"], f"{what}.from")
    else:
        items = c.sequence(f[op], f"{what}.{op}")
        if not items:
            raise c.fail(f[op], f"{what}.{op} must list at least one expression")
        parts = tuple(_expr(c, item, f"{what}.{op}[{k}]") for k, item in enumerate(items))
    chunks, take = None, ()
    if ("chunks" in f) != ("take" in f):
        given, missing = ("chunks", "take") if "chunks" in f else ("take", "chunks")
        raise c.fail(f[given], f"{what}: {given} needs {missing} (cut into `chunks` parts, join the parts "
                               "listed in `take`)")
    if "chunks" in f:
        chunks = c.integer(f["chunks"], f"{what}.chunks", 1)
        items = c.sequence(f["take"], f"{what}.take")
        if not items:
            raise c.fail(f["take"], f"{what}.take must list at least one part")
        for item in items:
            k = c.integer(item, f"{what}.take: each part", 0)
            if k >= chunks:
                raise c.fail(item, f"{what}.take: part {k} is out of range; {chunks} chunks are "
                                   f"numbered 0 to {chunks - 1}")
        take = tuple(item.value for item in items)
    dim = 0
    if "dim" in f:
        if op != "concat" and chunks is None:
            raise c.fail(f["dim"], f"{what}.dim is the dimension that concat joins and chunks cuts; "
                                   "this expression has neither")
        dim = c.integer(f["dim"], f"{what}.dim")
    transpose = False
    if "transpose" in f:
        if type(f["transpose"].value) is not bool:
            raise c.fail(f["transpose"], f"{what}.transpose must be true or false, "
                                         f"got {shown(f['transpose'].value)}")
        transpose = f["transpose"].value
    return Expr(op, name, parts, dim, chunks, take, transpose, node.line, node.column)


# ---------------------------------------------------------------------------------------------
# State dicts

def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a `.safetensors` file, or of a `torch.save`d state_dict (any other name),
    by name in file order. A file that is truncated, corrupt, needs code to be unpickled, or is
    not a mapping of names to tensors is an `ArtifactError`; nothing in it is run."""
    path = str(path)
    data = read_input_bytes(path, "state_dict", ArtifactError)
    if path.lower().endswith(".safetensors"):
        return _safetensors(data, path)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols; errors are ours to say
            warnings.simplefilter("ignore")
            loaded = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except MemoryError:
        raise out_of_memory(path) from None
    except pickle.UnpicklingError as e:
        # The weights-only unpickler refuses every global and opcode outside its allowlist before
        # acting on it: what needed code to rebuild was never built.
        raise ArtifactError(f"refused: the file holds Python objects besides tensors ({_refused(e)}), which "
                            "only running its code could rebuild; nothing in it was run. edbc reads tensors "
                            f"only: {_SAVE_HINT}, or use a .safetensors file", path=path) from None
    except Exception as e:  # noqa: BLE001  a damaged file fails anywhere in torch's readers
        hint = "; a safetensors file must be named *.safetensors" if data[8:9] == b"{" else ""
        raise ArtifactError(f"cannot be read as a torch.save file (truncated or corrupt?): "
                            f"{_first_sentence(e)}; expected a state_dict saved with torch.save{hint}",
                            path=path) from None
    return _check_state_dict(loaded, path)


def _safetensors(data: bytes, path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    try:
        loaded = load(data)
    except MemoryError:
        raise out_of_memory(path) from None
    except Exception as e:  # noqa: BLE001  SafetensorError, or a dtype torch lacks
        raise ArtifactError(f"not a valid safetensors file (truncated or corrupt?): {_first_sentence(e)}; "
                            "expected tensors saved with safetensors.torch.save_file", path=path) from None
    return _check_state_dict(loaded, path)


def _refused(e: Exception) -> str:
    text = str(e)
    found = re.search(r"GLOBAL (\S+)", text) or re.search(r"(Unsupported \w+ \S+)", text)
    return quoted(found.group(1).rstrip("."), 80) if found else "not a tensor"


def _first_sentence(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else type(e).__name__
    return quoted(text.split(". ")[0].rstrip("."), 100)


def _kind(value) -> str:
    """What a loaded value is, in words (never its repr)."""
    if isinstance(value, dict):
        return f"a mapping of {len(value)} entries"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)} items"
    if value is None:
        return "None"
    name = type(value).__name__
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


def _check_state_dict(loaded, path: str) -> dict[str, torch.Tensor]:
    """A mapping of names to dense tensors, or an `ArtifactError` saying what it is instead."""
    expected = "expected a state_dict, a mapping of tensor names to tensors"
    if not isinstance(loaded, dict):
        raise ArtifactError(f"the file holds {_kind(loaded)}, not a state_dict; {expected} "
                            f"({_SAVE_HINT})", path=path)
    if not loaded:
        raise ArtifactError(f"the state_dict holds no tensors; {expected}", path=path)
    out: dict[str, torch.Tensor] = {}
    for key, value in loaded.items():
        if not isinstance(key, str):
            raise ArtifactError(f"the file holds a key that is {_kind(key)}, not a tensor name; {expected}",
                                path=path)
        if isinstance(value, dict) and any(isinstance(v, (torch.Tensor, dict)) for v in value.values()):
            raise ArtifactError(f"entry '{quoted(key)}' is {_kind(value)}, not a tensor: a checkpoint that "
                                f"nests its state_dict under '{quoted(key)}'; {_SAVE_HINT}", path=path)
        if not isinstance(value, torch.Tensor):
            raise ArtifactError(f"entry '{quoted(key)}' is {_kind(value)}, not a tensor; {expected} "
                                f"({_SAVE_HINT})", path=path)
        if value.layout != torch.strided:
            raise ArtifactError(f"tensor '{quoted(key)}' is stored {str(value.layout).removeprefix('torch.')}; "
                                "expected dense tensors", path=path)
        out[key] = value.detach()
    return out


# ---------------------------------------------------------------------------------------------
# Import

def import_weights(spec: ModelSpec, tensors: dict[str, torch.Tensor], mapping: Mapping | None = None,
                   source: str | None = None) -> dict[str, torch.Tensor]:
    """One fp32, contiguous CPU tensor per parameter of `spec`, in its order, from `tensors`
    (a state_dict) through `mapping` (None: every parameter read by its own name). `source`
    names the tensors' file in errors. Every tensor must be read by some parameter or ignored."""
    mapping = mapping or Mapping()
    for key, expr in mapping.params.items():
        if key not in spec.params:
            raise MappingError(f"params: model '{spec.name}' has no parameter '{quoted(key)}'; its parameters "
                               f"are: {', '.join(spec.params)}", path=mapping.path, line=expr.line,
                               column=expr.column)
    reader = _Reader(tensors, mapping, source)
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, p in spec.params.items():
            expr = mapping.params.get(name) or Expr.tensor(name)
            value = reader.evaluate(expr, name)
            if tuple(value.shape) != tuple(p.shape):
                raise reader.fail(f"{_gives(expr, value)}; parameter {name}{reader.at(name)} needs "
                                  f"{_fmt(p.shape)}{_hint(expr, value, p.shape)}")
            if not torch.isfinite(value).all():
                raise reader.fail(f"parameter {name}: {expr} gives values beyond float32's range")
            out[name] = value.to("cpu", torch.float32, copy=True).contiguous()
    extra = [t for t in tensors if t not in reader.used and not mapping.ignores(t)]
    if extra:
        shown_ = ", ".join(f"'{quoted(t)}'{_dtype_note(tensors[t])}" for t in extra[:_SHOWN_NAMES])
        more = f" and {len(extra) - _SHOWN_NAMES} more" if len(extra) > _SHOWN_NAMES else ""
        noun = "tensor" if len(extra) == 1 else "tensors"
        where = "a mapping's params" if mapping.path is None else f"the params of {mapping.path}"
        raise reader.fail(f"{noun} {shown_}{more} {'is' if len(extra) == 1 else 'are'} read by no parameter of "
                          f"model '{spec.name}'; map {'it' if len(extra) == 1 else 'them'} in {where}, or list "
                          f"{'it' if len(extra) == 1 else 'them'} under its ignore:")
    return out


class _Reader:
    """Evaluates source expressions over the tensors, remembering which it read."""

    def __init__(self, tensors: dict[str, torch.Tensor], mapping: Mapping, source: str | None):
        self.tensors = tensors
        self.mapping = mapping
        self.source = source
        self.used: set[str] = set()
        self.cache: dict[str, torch.Tensor] = {}

    def fail(self, message: str) -> WeightsError:
        return WeightsError(message, path=self.source)

    def at(self, param: str) -> str:
        """Where the mapping maps `param`, for errors."""
        expr = self.mapping.params.get(param)
        if expr is None or self.mapping.path is None:
            return ""
        return f" ({self.mapping.path}:{expr.line}:{expr.column})"

    def tensor(self, name: str, param: str) -> torch.Tensor:
        if name in self.cache:
            return self.cache[name]
        if name not in self.tensors:
            raise self.fail(self._missing(name, param))
        t = self.tensors[name]
        if not isinstance(t, torch.Tensor):
            raise self.fail(f"'{quoted(name)}' is {_kind(t)}, not a tensor (parameter {param})")
        if not t.is_floating_point():
            raise self.fail(f"tensor '{quoted(name)}' is {str(t.dtype).removeprefix('torch.')}, not floating point; "
                            f"parameter {param}{self.at(param)} needs floating-point weights")
        value = t.detach().to("cpu", torch.float32)
        if not torch.isfinite(value).all():
            nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            if nan or inf:
                counts = " and ".join(f"{n} {kind}" for n, kind in ((nan, "NaN"), (inf, "infinite")) if n)
                what = f"{counts} value{'s' if nan + inf > 1 else ''}"
            else:
                what = f"values beyond float32's range (up to {t.abs().max().item():.3g})"
            raise self.fail(f"tensor '{quoted(name)}' holds {what} (parameter {param}); weights must be finite")
        self.used.add(name)
        self.cache[name] = value
        return value

    def _missing(self, name: str, param: str) -> str:
        if param in self.mapping.params:
            how = f"parameter {param}{self.at(param)} reads it"
        elif self.mapping.path is not None:
            how = f"parameter {param} is not in {self.mapping.path}, so it is read by its own name"
        else:
            how = f"without a mapping, parameter {param} is read by its own name; give a mapping file"
        names = list(self.tensors)
        close = difflib.get_close_matches(name, names, n=1)
        if close:
            tail = f"; did you mean '{quoted(close[0])}'?"
        else:
            more = f" and {len(names) - _SHOWN_NAMES} more" if len(names) > _SHOWN_NAMES else ""
            tail = f"; the file holds: {', '.join(quoted(n) for n in names[:_SHOWN_NAMES])}{more}"
        return f"no tensor '{quoted(name)}' ({how}){tail}"

    def evaluate(self, expr: Expr, param: str) -> torch.Tensor:
        if expr.op == "from":
            value = self.tensor(expr.name, param)
        else:
            parts = [self.evaluate(p, param) for p in expr.parts]
            value = self._sum(expr, parts, param) if expr.op == "sum" else self._concat(expr, parts, param)
        if expr.chunks is not None:
            dim = self._dim(expr, value, param)
            size = value.shape[dim]
            if size % expr.chunks:
                raise self.fail(f"{_base(expr)} is {_fmt(value.shape)}: chunks: {expr.chunks} does not divide its "
                                f"dimension {expr.dim} ({size}) (parameter {param}{self.at(param)})")
            step = size // expr.chunks
            value = torch.cat([value.narrow(dim, k * step, step) for k in expr.take], dim=dim)
        if expr.transpose:
            if value.dim() < 2:
                raise self.fail(f"{_base(expr)} is {_fmt(value.shape)}: a {value.dim()}-D tensor cannot be transposed "
                                f"(parameter {param}{self.at(param)}); drop transpose: true")
            value = value.transpose(-2, -1)
        return value

    def _dim(self, expr: Expr, value: torch.Tensor, param: str) -> int:
        if not -value.dim() <= expr.dim < value.dim():
            raise self.fail(f"{_base(expr)} is {_fmt(value.shape)}, which has no dimension {expr.dim} "
                            f"(parameter {param}{self.at(param)})")
        return expr.dim % value.dim()

    def _sum(self, expr: Expr, parts: list[torch.Tensor], param: str) -> torch.Tensor:
        for p, v in zip(expr.parts[1:], parts[1:]):
            if v.shape != parts[0].shape:
                raise self.fail(f"sum: {expr.parts[0]} is {_fmt(parts[0].shape)} but {p} is {_fmt(v.shape)}; "
                                f"summed tensors need one shape (parameter {param}{self.at(param)})")
        total = parts[0].clone()
        for v in parts[1:]:
            total += v
        return total

    def _concat(self, expr: Expr, parts: list[torch.Tensor], param: str) -> torch.Tensor:
        dim = self._dim(expr, parts[0], param)
        first = parts[0]
        for p, v in zip(expr.parts[1:], parts[1:]):
            if v.dim() != first.dim() or v.shape[:dim] + v.shape[dim + 1:] != first.shape[:dim] + first.shape[dim + 1:]:
                raise self.fail(f"concat along dimension {expr.dim}: {expr.parts[0]} is {_fmt(first.shape)} but {p} "
                                f"is {_fmt(v.shape)}; they must agree in every other dimension "
                                f"(parameter {param}{self.at(param)})")
        return torch.cat(parts, dim=dim)


def _fmt(shape) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def _base(expr: Expr) -> str:
    """The value a transform applies to, for errors."""
    if expr.op == "from":
        return f"tensor {expr.name}"
    return f"the {expr.op} of {', '.join(expr.names())}"


def _gives(expr: Expr, value: torch.Tensor) -> str:
    if expr.plain:
        return f"tensor {expr.name} is {_fmt(value.shape)}"
    return f"{expr} gives {_fmt(value.shape)}"


def _hint(expr: Expr, value: torch.Tensor, shape) -> str:
    if value.dim() >= 2 and tuple(value.shape[:-2]) + (value.shape[-1], value.shape[-2]) == tuple(shape):
        return " (drop transpose: true?)" if expr.transpose else " (transpose: true?)"
    return ""


def _dtype_note(t) -> str:
    if isinstance(t, torch.Tensor) and not t.is_floating_point():
        return f" ({str(t.dtype).removeprefix('torch.')})"
    return ""
