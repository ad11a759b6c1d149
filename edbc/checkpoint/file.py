"""Model checkpoints: a model's weights and what reusing them needs, as one safetensors file.

The tensors are the spec's parameters by name (fp32). The safetensors metadata
(string to string) holds:

    format         "edbc.checkpoint"
    version        "major.minor"; another major version is refused, a newer minor loads
    model          the spec's model name
    spec           the spec's shape digest (`ModelSpec.shape_digest`): its architecture, not
                   how parameters are initialised
    vocabularies   JSON: field -> {"size": N, "words": [word of id 1, word of id 2, ...] or null
                   for crc32 buckets}
    labels         JSON: the readout's class names, class 0 first
    dims           JSON: dimensions set over the spec's own (`--set dims.vocab=20000`), {} if none;
                   the spec is read with them wherever the checkpoint is used
    provenance     JSON: which edbc made it, how (init, import-weights, train) and from what

Nothing in a checkpoint is code: safetensors holds raw tensors, the rest is
JSON read with bounds. A checkpoint is checked against the spec it is used with
(every parameter, of its shape, finite) and refused with one line otherwise.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from .. import __version__
from ..artifact import expect, expect_int, show, write_atomic
from ..data.vocab import Vocab, default_labels
from ..errors import ArtifactError
from ..inputs import load_json, read_input_bytes
from ..spec.model import ModelSpec

FORMAT = "edbc.checkpoint"
VERSION = (1, 0)
_HEADER_LIMIT = 100 * 2**20  # safetensors' own bound on its JSON header


@dataclass(frozen=True, eq=False)
class Checkpoint:
    model: str
    spec_digest: str  # the shape digest of the spec it belongs to
    weights: dict[str, torch.Tensor]  # parameter name -> fp32 tensor, in spec order
    vocabs: dict[str, Vocab]
    labels: tuple[str, ...]
    provenance: dict
    digest: str | None = None  # sha256 of the file it was read from (None until saved or loaded)
    dims: dict[str, int] = field(default_factory=dict)  # dimensions set over the spec's (--set)

    def check_spec(self, spec: ModelSpec, path: str | None = None) -> None:
        """Refuse a checkpoint of another model, or of another version of this one."""
        if self.model != spec.name:
            raise ArtifactError(f"this checkpoint is for model '{self.model}', not '{spec.name}'", path=path)
        if self.spec_digest != spec.shape_digest:
            raise ArtifactError(f"this checkpoint was made for another version of model '{spec.name}' (its "
                                "dimensions, parameters, cells or structure differ); expected one made with "
                                "this spec", path=path)


def encode_checkpoint(ckpt: Checkpoint) -> bytes:
    from safetensors.torch import save

    metadata = {
        "format": FORMAT, "version": f"{VERSION[0]}.{VERSION[1]}", "model": ckpt.model, "spec": ckpt.spec_digest,
        "vocabularies": _json({name: {"size": v.size, "words": None if v.words is None else list(v.words)}
                               for name, v in ckpt.vocabs.items()}),
        "labels": _json(list(ckpt.labels)), "dims": _json(ckpt.dims),
        "provenance": _json(dict(ckpt.provenance, edbc=__version__)),
    }
    return save({k: t.detach().to("cpu", torch.float32).contiguous() for k, t in ckpt.weights.items()}, metadata)


def save_checkpoint(ckpt: Checkpoint, path: str, inputs: Iterable[str | None] = ()) -> str:
    """Write `ckpt` atomically (never over one of `inputs`); returns the file's digest."""
    data = encode_checkpoint(ckpt)
    write_atomic(path, data, inputs)
    return hashlib.sha256(data).hexdigest()


def load_checkpoint(path: str, spec: ModelSpec) -> Checkpoint:
    """Read the checkpoint at `path` and check it against `spec`: the model, its shape digest, every
    parameter present with its shape and finite values, vocabularies of the spec's fields and sizes,
    one label name per class."""
    return check_checkpoint(read_checkpoint(path), spec, str(path))


def check_checkpoint(ckpt: Checkpoint, spec: ModelSpec, path: str | None = None) -> Checkpoint:
    """`ckpt` if it fits `spec` (read with the checkpoint's dims), else an `ArtifactError`."""
    ckpt.check_spec(spec, path)
    _check_weights(ckpt.weights, spec, path)
    fail = _failer(path)
    if set(ckpt.vocabs) != set(spec.vocabs):
        fail(f"its vocabularies are of the fields {sorted(ckpt.vocabs)}; expected {sorted(spec.vocabs)}")
    for name, v in ckpt.vocabs.items():
        if v.size != spec.vocabs[name].size:
            fail(f"vocabulary '{name}' has {v.size} ids; the spec gives {spec.vocabs[name].size}")
    if len(ckpt.labels) != spec.classes:
        fail(f"it names {len(ckpt.labels)} labels; the readout has {spec.classes} classes")
    return ckpt


def read_checkpoint(path: str) -> Checkpoint:
    """A checkpoint read on its own, for `edbc inspect`: its parts checked, not its fit to a spec."""
    return decode_checkpoint(read_input_bytes(path, "checkpoint", ArtifactError), str(path))


def is_checkpoint(path: str) -> bool:
    """A safetensors file by its name."""
    return str(path).endswith(".safetensors")


def format_checkpoint(ckpt: Checkpoint, path: str | None = None) -> str:
    sizes = sum(t.numel() for t in ckpt.weights.values())
    vocabs = ", ".join(f"{name} {v.size} ids ({'hashed' if v.hashed else f'{len(v.words)} words'})"
                       for name, v in ckpt.vocabs.items())
    labels = ", ".join(ckpt.labels[:12]) + (", ..." if len(ckpt.labels) > 12 else "")
    made = ", ".join(f"{k} {str(v)[:12] if k.endswith('digest') else v}" for k, v in sorted(ckpt.provenance.items()))
    return "\n".join([
        f"checkpoint {path or ''}".rstrip(),
        f"  model        {ckpt.model} (spec shape {ckpt.spec_digest[:12]}, file {(ckpt.digest or '')[:12]})",
        f"  parameters   {len(ckpt.weights)} tensors, {sizes} values",
        f"  vocabularies {vocabs or 'none'}",
        f"  labels       {len(ckpt.labels)}: {labels}",
        f"  made by      {made}",
    ])


def decode_checkpoint(data: bytes, path: str) -> Checkpoint:
    """A checkpoint's parts, each of its type; not yet checked against a spec."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    fail = _failer(path)
    if len(data) < 8:
        fail("truncated: shorter than a safetensors header; expected a checkpoint written by edbc")
    (length,) = struct.unpack("<Q", data[:8])
    if length > min(_HEADER_LIMIT, len(data) - 8):
        fail("truncated or not a safetensors file: its header length runs past the end")
    try:
        header = load_json(data[8:8 + length].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        fail("not a safetensors file: its header is not JSON")
    meta = expect(header.get("__metadata__") if type(header) is dict else None, dict, "metadata", fail)
    if meta.get("format") != FORMAT:
        fail(f"format is {show(meta.get('format'))}; expected \"{FORMAT}\" (a checkpoint from `edbc init`, "
             "`edbc import-weights` or `edbc train`)")
    version = expect(meta.get("version"), str, "version", fail)
    major = version.partition(".")[0]
    if not major.isdigit() or int(major) != VERSION[0]:
        fail(f"version {show(version)}; this edbc reads checkpoints of version {VERSION[0]}.x")
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, TypeError, KeyError, RuntimeError, OverflowError):
        fail("corrupt or truncated: its tensors do not read back as safetensors")
    vocabs = {}
    for name, entry in _meta_json(meta, "vocabularies", dict, fail).items():
        expect(entry, dict, f"vocabulary '{name}'", fail)
        size = expect_int(entry.get("size"), f"vocabulary '{name}''s size", fail, low=1)
        words = entry.get("words")
        if words is not None:
            words = expect(words, list, f"vocabulary '{name}''s words", fail)
            if not all(type(w) is str for w in words) or len(set(words)) != len(words) or len(words) >= size:
                fail(f"vocabulary '{name}': its words are not {size - 1} or fewer distinct strings")
            words = tuple(words)
        vocabs[name] = Vocab(name, size, words)
    dims = _meta_json(meta, "dims", dict, fail) if "dims" in meta else {}
    for name, value in dims.items():
        expect_int(value, f"dims.{name}", fail, low=0)
    labels = _meta_json(meta, "labels", list, fail)
    if not all(type(x) is str for x in labels) or len(set(labels)) != len(labels):
        fail("labels: expected a list of distinct strings")
    return Checkpoint(expect(meta.get("model"), str, "model", fail), expect(meta.get("spec"), str, "spec", fail),
                      tensors, vocabs, tuple(labels), _meta_json(meta, "provenance", dict, fail),
                      hashlib.sha256(data).hexdigest(), dims)


def new_checkpoint(spec: ModelSpec, weights: dict[str, torch.Tensor], vocabs: dict[str, Vocab],
                   labels: tuple[str, ...] | None, provenance: dict, dims: dict[str, int] | None = None) -> Checkpoint:
    """A checkpoint of `spec` (read with `dims` set over its own)."""
    weights = {k: weights[k].detach().to("cpu", torch.float32) for k in weights}
    _check_weights(weights, spec, None)
    return Checkpoint(spec.name, spec.shape_digest, {k: weights[k] for k in spec.params}, vocabs,
                      labels if labels is not None else default_labels(spec.classes), provenance, None,
                      dict(dims or {}))


def _check_weights(weights: dict[str, torch.Tensor], spec: ModelSpec, path: str | None) -> None:
    fail = _failer(path)
    for name in weights:
        if name not in spec.params:
            fail(f"tensor '{name}' is no parameter of model '{spec.name}'")
    for name, p in spec.params.items():
        t = weights.get(name)
        if t is None:
            fail(f"parameter '{name}' is missing; expected a tensor of shape {list(p.shape)}")
        if tuple(t.shape) != p.shape or t.dtype != torch.float32:
            fail(f"parameter '{name}' is {str(t.dtype).removeprefix('torch.')}{list(t.shape)}; "
                 f"expected float32{list(p.shape)}")
        if not bool(torch.isfinite(t).all()):
            fail(f"parameter '{name}' holds NaN or infinite values; expected finite numbers")


def _meta_json(meta: dict, key: str, kind: type, fail):
    text = expect(meta.get(key), str, key, fail)
    try:
        return expect(load_json(text), kind, key, fail)
    except json.JSONDecodeError:
        fail(f"{key} is not JSON")


def _json(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _failer(path: str | None):
    def fail(message: str):
        raise ArtifactError(f"checkpoint: {message}", path=path)
    return fail
