"""Settings that come from the environment or the checkout, in one place."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = Path(os.environ.get("EDBC_CONFIG_DIR", REPO_ROOT / "configs"))
MODELS_DIR = CONFIG_DIR / "models"
DEFAULT_MODEL = MODELS_DIR / "treelstm.yaml"
# Shipped policy files, `<model>.policy.json` (cell level) and `<model>.op.policy.json`.
PLANS_DIR = Path(os.environ.get("EDBC_PLANS_DIR", REPO_ROOT / "plans"))
# Real data sets live beside the checkout and are read by path, never copied in.
SHARED_DATA = Path(os.environ.get("EDBC_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

CHECK_TOLERANCE = 1e-4  # max |batched - reference| accepted by --check, in fp32
DEFAULT_SYNTHETIC_INSTANCES = 256  # instances generated when no --data is given
DEFAULT_BATCH_SIZE = 64
DEFAULT_MEMORY = "pq"  # memory planning mode of `run` and `compile`
DEFAULT_THREADS = 1  # torch threads; timings are comparable to single-threaded DyNet
# Memory the runtime may assume available, in bytes (default: what the device reports).
MEMORY_LIMIT = int(os.environ["EDBC_MEMORY_LIMIT"]) if os.environ.get("EDBC_MEMORY_LIMIT") else None
