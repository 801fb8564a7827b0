#!/usr/bin/env bash
# For users with the internet (not runnable on the project's offline machines, and not run there):
# download COCO 2014 (train2014 + val2014 images, the official caption files) and the Karpathy split,
# then check everything and write data/coco/captions.json and data/coco/vocab.json.
# About 19 GB of zips and 20 GB unpacked. Re-running resumes downloads and skips what is unpacked.
#   bash scripts/prepare_coco.sh [RAW_DIR (default: data/coco_raw)]
set -euo pipefail
cd "$(dirname "$0")/.."
raw=${1:-data/coco_raw}
mkdir -p "$raw"

fetch() {  # URL: download into $raw under its own name, resumable, renamed when complete
  local name
  name=$(basename "$1")
  if [ ! -f "$raw/$name" ]; then
    curl -fL --retry 3 -C - -o "$raw/$name.part" "$1"
    mv "$raw/$name.part" "$raw/$name"
  fi
}
unpack() {  # ZIP MARKER: unzip once (MARKER is a path the zip creates)
  if [ ! -e "$raw/$2" ]; then
    unzip -q -o "$raw/$1" -d "$raw/.unzip" && mv "$raw/.unzip/"* "$raw/" && rmdir "$raw/.unzip"
  fi
}

fetch http://images.cocodataset.org/zips/train2014.zip
fetch http://images.cocodataset.org/zips/val2014.zip
fetch http://images.cocodataset.org/annotations/annotations_trainval2014.zip
fetch https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip
unpack train2014.zip train2014
unpack val2014.zip val2014
unpack annotations_trainval2014.zip annotations
unpack caption_datasets.zip dataset_coco.json

bash scripts/setup.sh
# The Karpathy split (113,287 train with restval / 5,000 val / 5,000 test images), as papers report.
.venv/bin/captioner data coco --karpathy "$raw/dataset_coco.json" --images "$raw" --out data/coco
# The official files instead (val2014 halved into val and test):
#   .venv/bin/captioner data coco --train-json "$raw/annotations/captions_train2014.json" \
#     --val-json "$raw/annotations/captions_val2014.json" --images "$raw" --out data/coco
echo "next: .venv/bin/captioner train --config configs/coco_resnet101.yaml"
