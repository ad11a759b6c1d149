"""Forged artifacts: plans, policies and checkpoints whose checksums are recomputed after one field
is changed, so that only edbc's validation of what they say stands between them and the runtime.

`python -m tests.forge` writes the forged files of the bad-input corpus (tests/bad_inputs/).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import zipfile

from edbc import artifact
from edbc.policy.train import CHECKPOINT_FORMAT, CHECKPOINT_MAGIC


def rewrite_header(data: bytes, magic: bytes, change) -> bytes:
    """`change(head)` on an artifact's JSON header; checksum recomputed, parts kept byte for byte."""
    pos = len(magic)
    length = int(data[pos:pos + 12])
    head = json.loads(data[pos + 13:pos + 13 + length])
    head.pop("checksum")
    change(head)
    head["checksum"] = hashlib.sha256(artifact._canonical(head)).hexdigest()
    text = artifact._canonical(head)
    return magic + f"{len(text):012d}\n".encode() + text + data[pos + 13 + length:]


def reencode(data: bytes, magic: bytes, fmt: str, major: int, change) -> bytes:
    """`change(head, arrays)` on a decoded artifact (arrays writable copies); encoded again, so
    every checksum is valid."""
    head, arrays = artifact.decode_artifact("forged", data, magic, fmt, major)
    arrays = {k: v.copy() for k, v in arrays.items()}
    change(head, arrays)
    version = tuple(int(x) for x in head.pop("version").split("."))
    fmt = head.pop("format")
    head.pop("parts")
    return artifact.encode_artifact(magic, fmt, version, head, arrays)


def rewrite_policy(text: str, change) -> str:
    doc = json.loads(text)
    doc.pop("checksum")
    change(doc)
    doc["checksum"] = hashlib.sha256(artifact._canonical(doc)).hexdigest()
    return json.dumps(doc, sort_keys=True, indent=1)


class _Command:
    """Runs a shell command when unpickled: what a forged stable-baselines3 zip can carry."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def command_pickle(command: str) -> bytes:
    import pickle
    return pickle.dumps(_Command(command))


def sb3_zip_with_payload(marker: str) -> bytes:
    """A stable-baselines3 model zip whose `data` entry holds a (cloud)pickle that creates `marker`
    when stable-baselines3's loader reads it."""
    payload = base64.b64encode(command_pickle(f"touch {marker}")).decode()
    data = {"policy_class": {":type:": "<class 'type'>", ":serialized:": payload}}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("data", json.dumps(data))
        z.writestr("_stable_baselines3_version", "2.3.0")
    return buffer.getvalue()


def old_checkpoint_with_payload(marker: str, run: dict | None = None) -> bytes:
    """A checkpoint of the old format (1.0: a stable-baselines3 zip as part 'model'), its checksums
    valid, whose zip would create `marker` if it were unpickled."""
    import numpy as np

    header = {"run": run or {}, "timesteps": 2048, "best_table": [], "history": []}
    blob = np.frombuffer(sb3_zip_with_payload(marker), dtype=np.uint8)
    return artifact.encode_artifact(CHECKPOINT_MAGIC, CHECKPOINT_FORMAT, (1, 0), header, {"model": blob})
