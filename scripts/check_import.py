"""A PyTorch user's trained model, run by edbc: module -> torch.save -> `edbc import-weights` ->
`edbc run --weights --output`, compared with the module's own outputs.

For the TreeLSTM, the BiLSTM tagger (one bidirectional nn.LSTM) and the lattice LSTM of
`edbc/bench/torch_models.py`: the module is built from a seed (as if trained), its state_dict saved
with torch.save; `edbc import-weights` reads it through the shipped mapping (configs/mappings/), with
the vocabularies built from the training split (the tagger: a word list file, as a user with a
vocabulary of their own gives it); `edbc run` writes every instance's outputs to a .jsonl file, which
is compared with the module's forward on the same token ids. Prints one markdown table.

    python scripts/check_import.py [--limit 200]        # needs ../shared/data
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import edbc  # noqa: E402
from edbc.bench.torch_models import build_module  # noqa: E402
from edbc.settings import MAPPINGS_DIR, MODELS_DIR, NO_SPLITS, SHARED_DATA, SHARED_SPLITS  # noqa: E402

MODELS = ("treelstm", "bilstm_tagger", "lattice_lstm")


def edbc_cli(*args) -> None:
    done = subprocess.run([sys.executable, "-m", "edbc", *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"edbc {args[0]} failed: {done.stderr.strip()}")


def check(model: str, folder: Path, limit: int) -> dict:
    spec_path = MODELS_DIR / f"{model}.yaml"
    model_ = edbc.load(spec_path)
    train, _, test = SHARED_SPLITS.get(model_.spec.kind, NO_SPLITS)
    data = SHARED_DATA / test
    if not data.exists():
        raise SystemExit(f"{data}: no such file; this script reads the real data sets in ../shared/data")
    module = build_module(model_.spec, seed=7).eval()
    torch.save(module.state_dict(), folder / "module.pt")
    vocab_args: list = []
    if train is not None:
        vocab_args = ["--data", SHARED_DATA / train]
    else:  # WikiNER has one split: the user's own word list, most frequent words first
        words = Counter(w for line in data.read_text().splitlines()[:limit] for w in
                        (t.rpartition("|")[0] for t in line.split()))
        (folder / "words.txt").write_text("\n".join(w for w, _ in words.most_common(model_.spec.vocabs["word"].size - 1)))
        vocab_args = ["--vocab", f"word={folder / 'words.txt'}"]
    ckpt = folder / "model.safetensors"
    t0 = time.perf_counter()
    edbc_cli("import-weights", spec_path, folder / "module.pt", "--map", MAPPINGS_DIR / f"{model}.yaml",
             *vocab_args, "-o", ckpt)
    out = folder / "out.jsonl"
    edbc_cli("run", spec_path, "--weights", ckpt, "--data", data, "--limit", limit, "--output", out)
    seconds = time.perf_counter() - t0
    written = [torch.tensor(json.loads(line)["logits"]) for line in out.read_text().splitlines()]
    instances = edbc.load(spec_path, weights=ckpt).data(str(data), limit).instances
    with torch.no_grad():
        expected = module(instances)
    got = torch.cat([w.reshape(-1, expected.shape[1]) for w in written])
    return {"model": model, "data": str(test), "instances": len(written), "rows": len(got),
            "error": (got - expected).abs().max().item(), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| model | data | instances | rows | max abs error, edbc vs module | import + run, s |")
    print("|---|---|---:|---:|---:|---:|")
    for model in MODELS:
        with tempfile.TemporaryDirectory() as tmp:
            r = check(model, Path(tmp), args.limit)
        print(f"| {r['model']} | {r['data']} | {r['instances']} | {r['rows']} | {r['error']:.2e} | "
              f"{r['seconds']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
