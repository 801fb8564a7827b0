#!/usr/bin/env bash
# The synthetic shapes experiment (README, "What it takes to name a red triangle"): draw the shapes
# data set, train on the CPU, score the held-out test split, and caption test images with their
# attention maps (about 8 minutes on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
captioner=.venv/bin/captioner
$captioner data shapes --out data/shapes
$captioner train --config configs/shapes.yaml
$captioner evaluate --checkpoint runs/shapes/best.pt --split test --beam-size 1 3 --output runs/shapes/test_scores.json
$captioner caption data/shapes/images/test_00000{0..7}.png --checkpoint runs/shapes/best.pt \
  --attention-dir runs/shapes/attention
echo "attention maps: runs/shapes/attention/*.attention.png"
