"""Where a shapes captioner fails on the held-out colour-shape pairs, measured with teacher forcing.

For every object in the first --images test images, the decoder is fed the reference caption up to
the object's colour word and we read its most likely next word (the shape noun):
  * `noun right`: with the true colour word, as the model would see it;
  * `noun right, colour swapped` (--swap): with the colour word replaced by a colour that *was* seen
    with that shape in training. If the noun becomes right, the language model's word prior vetoed it.
It also reports the grounding (attention peak inside the box) of colour words and nouns per object
position, from free-running greedy captions.

    python scripts/shapes_analysis.py --checkpoint runs/shapes/best.pt --swap
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
from PIL import Image

from captioner.data.images import ImageTransform
from captioner.data.manifest import ImageSet, load_manifest
from captioner.data.shapes import COLOURS, HELD_OUT
from captioner.metrics import attention_peak_in_box
from captioner.models.registry import restore
from captioner.tasks.captioning import generate
from captioner.text import tokenize


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data-root", help="default: the checkpoint's data.root")
    parser.add_argument("--split", default="test")
    parser.add_argument("--images", type=int, default=200, help="how many images of the split (default: 200)")
    parser.add_argument("--swap", action="store_true", help="also measure with a swapped colour word")
    return parser


def seen_partner(colour: str, shape: str) -> str:
    """A colour other than `colour` that appears with `shape` in training."""
    return next(c for c in COLOURS if c != colour and (c, shape) not in HELD_OUT)


def next_word(model, memory, ids, vocab) -> str:
    """The word the teacher-forced decoder puts first after ids."""
    logits, _ = model.decoder(memory, ids, class_offset=model.class_offset)
    return vocab.itos[int(logits[0, -1].argmax())]


@torch.no_grad()  # the encoder and the teacher-forced decoder alike
def main(args: argparse.Namespace) -> None:
    model, config, vocabularies = restore(args.checkpoint, kind="captioner")
    vocab = vocabularies["vocab"]
    manifest = load_manifest(args.data_root or config.data.root)
    records = manifest.split(args.split)[: args.images]
    transform = ImageTransform(size=config.data.image_size, mean=model.encoder.mean, std=model.encoder.std)
    held = {" ".join(pair) for pair in HELD_OUT}
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # right, right when swapped, total
    images = ImageSet(records, transform)
    for index, record in enumerate(records):
        memory = model.encoder(images[index][0].unsqueeze(0))  # (1, P, D): the CNN runs once per image
        words = tokenize(record.captions[0])
        for thing in record.objects:
            colour, shape = thing["phrase"].split()
            at = next(k for k in range(len(words) - 1) if words[k : k + 2] == [colour, shape])
            ids = torch.tensor([[vocab.bos_id, *vocab.encode(words[: at + 1])]])
            row = counts["held-out pairs" if thing["phrase"] in held else "seen pairs"]
            row[0] += next_word(model, memory, ids, vocab) == shape
            if args.swap:
                ids[0, -1] = vocab.stoi[seen_partner(colour, shape)]
                row[1] += next_word(model, memory, ids, vocab) == shape
            row[2] += 1
    print(f"{args.split} split, first {len(records)} images, teacher-forced next word after the colour:")
    for name, (right, swapped, total) in counts.items():
        extra = f", noun right with a swapped colour word {swapped / total:.2f}" if args.swap else ""
        print(f"  {name}: {total} objects, noun right {right / total:.2f}{extra}")

    captions = generate(model, images, vocab, torch.device("cpu"))
    grounded: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])
    exact = 0
    for tokens, attention, record in zip(captions.tokens, captions.attention, records, strict=True):
        with Image.open(record.path) as image:
            size = image.size  # boxes are in the file's pixels, whatever size the encoder reads
        exact += " ".join(tokens) == " ".join(tokenize(record.captions[0]))
        for order, thing in enumerate(record.objects):
            phrase = thing["phrase"].split()
            for start in range(len(tokens) - 1):
                if tokens[start : start + 2] == phrase:
                    for offset, kind in enumerate(("colour", "noun")):
                        hit = attention_peak_in_box(
                            attention[start + offset], config.encoder.grid_size, size, thing["box"]
                        )
                        grounded[(kind, order + 1)][0] += hit
                        grounded[(kind, order + 1)][1] += 1
    print(f"greedy captions: exact match {exact / len(records):.3f}; grounding by word kind and object position:")
    for (kind, order), (hits, total) in sorted(grounded.items()):
        print(f"  {kind} of object {order}: {hits / total:.2f} of {total}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
