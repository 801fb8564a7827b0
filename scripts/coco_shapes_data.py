"""A small data set at the COCO recipe's shapes, to check scripts/benchmark.py's coco rows against a real run.

    .venv/bin/python scripts/coco_shapes_data.py --out /tmp/coco_shapes
    .venv/bin/captioner data coco --train-json /tmp/coco_shapes/captions_train2014.json \\
        --val-json /tmp/coco_shapes/captions_val2014.json --images /tmp/coco_shapes --out /tmp/coco_shapes/data
    .venv/bin/captioner train --config configs/coco_resnet101.yaml data.root=/tmp/coco_shapes/data \\
        data.vocab=/tmp/coco_shapes/vocab.json encoder.weights=/tmp/coco_shapes/resnet101.pt \\
        decoder.class_words=null data.num_workers=2 train.batch_size=32 train.epochs=3 ...

Writes IMAGES JPEGs of 640 x 480 in the official COCO captions format (captions_train2014.json with one
caption per image, of 8 to 16 words as the benchmark draws them, and a small captions_val2014.json), a
10,000-word vocabulary, and a ResNet-101 state dict whose weights are random but whose batch-norm statistics
were measured on those images: the ResNet-101 without pretrained weights that a user would get exceeds the
fp16 feature cache's range (the cache refuses it), and the pretrained weights cannot be downloaded here.
Throughput does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from captioner.vocab import Vocab  # noqa: E402


def benchmark():
    spec = importlib.util.spec_from_file_location("benchmark", ROOT / "scripts" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("benchmark", module)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--images", type=int, default=768, help="training images, one caption each (default: 768)")
    args = parser.parse_args()
    out = Path(args.out)
    recipe = benchmark().RECIPES["coco"]
    words = [f"w{i}" for i in range(recipe["vocab"] - 4)]  # 4 specials: 10,000 in all
    rng, noise = random.Random(0), np.random.default_rng(0)
    splits = {"train2014": args.images, "val2014": 32}
    for split, count in splits.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        lengths = rng.choices(list(recipe["lengths"]), weights=list(recipe["lengths"].values()), k=count)
        for i, n in enumerate(lengths):
            name = f"COCO_{split}_{i:012d}.jpg"
            pixels = noise.integers(0, 256, (480 // 8, 640 // 8, 3), dtype=np.uint8)  # blocks: JPEG-sized files
            Image.fromarray(pixels).resize((640, 480), Image.BILINEAR).save(out / split / name, quality=90)
            images.append({"id": i, "file_name": name, "width": 640, "height": 480})
            annotations.append({"id": i, "image_id": i, "caption": " ".join(rng.choices(words, k=n))})
        (out / f"captions_{split}.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    Vocab(words).save(out / "vocab.json")
    write_weights(out, sorted((out / "train2014").iterdir())[:256], recipe["image_size"])
    print(f"{args.images} training images and captions, a {recipe['vocab']}-word vocabulary, resnet101.pt in {out}")


def write_weights(out: Path, files: list[Path], size: int) -> None:
    """A random ResNet-101 whose batch norms carry the statistics of these images (no classifier)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet101(weights=None)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain mean over the batches
    transform = torchvision.transforms.Compose(
        [
            torchvision.transforms.Resize((size, size)),
            torchvision.transforms.ToTensor(),
            torchvision.transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    model.train()
    with torch.no_grad():
        for start in range(0, len(files), 32):
            model(torch.stack([transform(Image.open(f).convert("RGB")) for f in files[start : start + 32]]))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    torch.save(state, out / "resnet101.pt")


if __name__ == "__main__":
    main()
