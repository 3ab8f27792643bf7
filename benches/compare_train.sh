#!/usr/bin/env bash
# Trains the click model on the same log with `trimtab train --json` (release build) and with
# the PyTorch baseline (benches/torch_mlp.py), and prints both reports and the time ratios.
#
# Usage: benches/compare_train.sh LOG.jsonl
#   PYTHON=/path/to/python (default python3) must have torch and numpy:
#   pip install torch numpy --index-url https://download.pytorch.org/whl/cpu
set -euo pipefail
LOG=${1:?usage: benches/compare_train.sh LOG.jsonl}
PYTHON=${PYTHON:-python3}
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin trimtab
BIN=${CARGO_TARGET_DIR:-target}/release/trimtab
THREADS=$(nproc)

echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p')"
RUST=$("$BIN" train --log "$LOG" --json)
TORCH=$("$PYTHON" benches/torch_mlp.py "$LOG" --threads "$THREADS")
echo "trimtab (candle): $RUST"
echo "torch:            $TORCH"
"$PYTHON" - "$RUST" "$TORCH" <<'PY'
import json, sys
r, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
r_epoch = r["train_seconds"] / max(r["epochs"], 1)
print(f"{'':18}{'trimtab':>12}{'torch':>12}")
print(f"{'epochs':18}{r['epochs']:>12}{t['epochs']:>12}")
print(f"{'train seconds':18}{r['train_seconds']:>12.2f}{t['train_seconds']:>12.2f}")
print(f"{'seconds / epoch':18}{r_epoch:>12.3f}{t['seconds_per_epoch']:>12.3f}")
for m in ("auc", "pr_auc", "logloss", "mae"):
    print(f"{m:18}{r['metrics'][m]:>12.4f}{t['metrics'][m]:>12.4f}")
print(f"ratio seconds/epoch trimtab/torch: {r_epoch / t['seconds_per_epoch']:.2f}")
print(f"ratio total train time trimtab/torch: {r['train_seconds'] / t['train_seconds']:.2f}")
PY
