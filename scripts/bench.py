"""The benchmark: `edbc bench` with the same options (see `edbc bench --help`).

    python scripts/bench.py [--models treelstm,lattice_lstm] [--batch-sizes 64] [--samples 20]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edbc.cli import main  # noqa: E402

main(["bench", *sys.argv[1:]])
