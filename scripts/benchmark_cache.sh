#!/usr/bin/env bash
# Decoder-only training from the feature cache vs. through the frozen CNN, on the same data and recipe:
# one epoch of configs/stamps.yaml each way (after `captioner data stamps`), throughput from metrics.jsonl.
#   bash scripts/benchmark_cache.sh [DATA_ROOT (default: data/stamps)]
set -euo pipefail
cd "$(dirname "$0")/.."
root=${1:-data/stamps}
captioner=.venv/bin/captioner
out=runs/benchmark_cache
rm -rf "$out"
# The cache is built (or reused) before the timed epoch; it is not part of the epoch's time.
$captioner train --config configs/stamps.yaml data.root="$root" train.epochs=1 train.run_dir=$out/cached
$captioner train --config configs/stamps.yaml data.root="$root" train.epochs=1 train.run_dir=$out/cnn \
  data.cache_features=false
.venv/bin/python - "$out" <<'PY'
import json, sys
rows = {name: json.loads(open(f"{sys.argv[1]}/{name}/metrics.jsonl").readline()) for name in ("cnn", "cached")}
for name, row in rows.items():  # elapsed: seconds of training so far, here the one epoch's
    print(f"{name:>6}: {row['elapsed']:.1f} s per epoch, {row['captions_per_s']:.1f} captions/s")
print(f"speed-up from the cache: {rows['cnn']['elapsed'] / rows['cached']['elapsed']:.1f}x")
PY
