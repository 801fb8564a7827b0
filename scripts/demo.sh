#!/usr/bin/env bash
# The main job on the embedded default: fetch the Tux Paint stamps (real pictures with human captions,
# from a Debian package), train a captioner on the CPU with the offline ImageNet EfficientNet-Lite0,
# score the held-out test split, caption the test pictures with their attention maps, and caption 13 public
# photographs (scikit-image, scikit-learn) it has never seen.
# A second run reuses the data, the feature cache and the trained model (delete runs/stamps to retrain).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
captioner=.venv/bin/captioner
$captioner data stamps --out data/stamps
if [ -f runs/stamps/last.pt ]; then
  $captioner train --config configs/stamps.yaml --resume  # finishes an interrupted run; a no-op if complete
else
  $captioner train --config configs/stamps.yaml
fi
$captioner evaluate --checkpoint runs/stamps/best.pt --split test --beam-size 1 3 --output runs/stamps/test_scores.json
mapfile -t test_images < <(.venv/bin/python -c '
import json
for e in json.load(open("data/stamps/captions.json"))["images"]:
    if e["split"] == "test":
        print("data/stamps/" + e["file"])')
# No --checkpoint: the demo's model (runs/stamps/best.pt) is the default one.
$captioner caption "${test_images[@]}" --attention-dir runs/stamps/attention > runs/stamps/test_captions.tsv
head -n 12 runs/stamps/test_captions.tsv
echo "... all ${#test_images[@]} test captions: runs/stamps/test_captions.tsv; attention maps: runs/stamps/attention/"
$captioner data photos --out data/photos > /dev/null
mapfile -t photos < <(ls data/photos/*)
$captioner caption "${photos[@]}" --attention-dir runs/stamps/photos --n-best 3 --html runs/stamps/photos.html \
  --json > runs/stamps/photos.json
.venv/bin/python - <<'EOF'
import json
for r in json.load(open("runs/stamps/photos.json")):
    top = r.get("top_class")
    print(r["image"], r["caption"], f"(classifier: {top['class']}, {top['probability']:.2f})" if top else "", sep="\t")
EOF
echo "photos with their attention maps: runs/stamps/photos/; open runs/stamps/photos.html to point at the words"
echo "caption your own pictures: .venv/bin/captioner caption my_photo.jpg --html report.html"
echo "or in a web page: .venv/bin/captioner serve (then open http://127.0.0.1:8000/)"
