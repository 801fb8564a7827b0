"""Write captioner/imagenet_words.tsv: the caption word of each of the 1,000 ImageNet classes.

    sudo apt-get install wordnet-base       # WordNet 3.0's database, /usr/share/wordnet
    .venv/bin/python scripts/class_word_table.py

ImageNet's classes are WordNet noun synsets (the wnids in the timm wheel's imagenet_synsets.txt, in the order
of the classifiers' outputs); torchvision names each by its first lemma ("monarch", "minibus", "basenji"). A
caption names things at their entry level ("a butterfly", "a bus", "a dog"; Ordonez et al., "From Large Scale
Image Categorization to Entry-Level Categories", ICCV 2013), so each class's word is, in this order:

1. a hand-written exception (captioner.class_words.OVERRIDES: "hot dog" is no dog);
2. the name and a word of its kind, where the name alone is rare or means other things too and WordNet has
   that lemma: "monarch" -> "monarch butterfly", "pickup" -> "pickup truck", "basset" -> "basset hound" (a
   lemma "NAME Y" where Y is a lemma of one of the synset's hypernyms up to three levels up);
3. the parent's word for a rare name: where the name is rarer than 1 in a million English words (Zipf
   frequency < 3.0, from the wordfreq wheel), and a direct hypernym's single-word lemma (whose first noun sense
   is that hypernym) is also another class's word: "basenji" -> "dog", "sombrero" -> "hat", "wok" -> "pan";
4. the last word of the name ("tiger cat" -> "cat", "sports car" -> "car").

Nothing here reads a data set's captions or a model's results; the table is made once and committed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from captioner.class_words import OVERRIDES, TABLE, imagenet_classes  # noqa: E402
from captioner.text import tokenize  # noqa: E402

RARE = 3.0  # Zipf frequency: 1 in a million words
COMMON = 4.0  # 1 in 100,000
DEPTH = 3  # hypernym levels whose lemmas may end a class's multi-word lemma


def read_nouns(folder: Path) -> dict[int, tuple[list[str], list[int]]]:
    """WordNet's noun synsets: offset -> (lemmas, hypernym offsets), from data.noun."""
    synsets = {}
    with open(folder / "data.noun", encoding="latin-1") as lines:
        for line in lines:
            if line.startswith("  "):  # the licence
                continue
            fields = line.split(" | ")[0].split()
            count = int(fields[3], 16)
            lemmas = [fields[4 + 2 * i].replace("_", " ") for i in range(count)]
            i = 4 + 2 * count
            pointers, i = int(fields[i]), i + 1
            hypernyms = []
            for _ in range(pointers):
                if fields[i] in ("@", "@i") and fields[i + 2] == "n":
                    hypernyms.append(int(fields[i + 1]))
                i += 4
            synsets[int(fields[0])] = (lemmas, hypernyms)
    return synsets


def noun_senses(folder: Path) -> dict[str, list[int]]:
    """Each noun lemma's senses, most frequent first (the offsets index.noun lists)."""
    senses = {}
    with open(folder / "index.noun", encoding="latin-1") as lines:
        for line in lines:
            if not line.startswith("  "):
                fields = line.split()
                senses[fields[0].replace("_", " ")] = [int(o) for o in fields[-int(fields[2]) :]]
    return senses


def imagenet_wnids() -> list[str]:
    """The 1,000 wnids in class order, from the timm wheel (pip download, not installed)."""
    from captioner.data.wheels import read_wheel

    member = "timm/data/_info/imagenet_synsets.txt"
    return read_wheel("timm", lambda name: name == member)[member].decode().split()


def zipf_of():
    try:
        from wordfreq import zipf_frequency
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "wordfreq"], check=True)
        from wordfreq import zipf_frequency
    return lambda word: zipf_frequency(word, "en")


def table(wordnet: Path) -> list[tuple[str, str, str, str]]:
    """(wnid, name, word, rule) for every class."""
    synsets, senses, zipf = read_nouns(wordnet), noun_senses(wordnet), zipf_of()
    names, wnids = imagenet_classes(), imagenet_wnids()
    last = [tokenize(name)[-1] for name in names]
    plain = set(last) | set(OVERRIDES.values())

    def ancestors(offset: int, depth: int) -> list[int]:
        level, found = [offset], []
        for _ in range(depth):
            level = [h for o in level for h in synsets[o][1]]
            found += level
        return found

    rows = []
    for k, (wnid, name) in enumerate(zip(wnids, names, strict=True)):
        offset = int(wnid[1:])
        lemmas = synsets[offset][0]
        if name in OVERRIDES:
            rows.append((wnid, name, OVERRIDES[name], "exception"))
            continue
        kinds = {lemma.lower() for o in ancestors(offset, DEPTH) for lemma in synsets[o][0]}
        longer = [
            lemma.lower()
            for lemma in lemmas
            if lemma.lower().startswith(name.lower() + " ") and lemma.split()[-1].lower() in kinds
        ]
        rare = zipf(name.lower()) < RARE
        ambiguous = len(senses.get(name.lower(), [])) > 1  # "monarch" is a king too, "pickup" nine things
        if longer and (ambiguous or rare):
            rows.append((wnid, name, longer[0], "name and kind"))
            continue
        parents = [  # single words, each the first sense of the word, said by another class, far more common
            lemma
            for o in synsets[offset][1]
            for lemma in synsets[o][0]
            if " " not in lemma
            and lemma.islower()
            and senses.get(lemma, [0])[0] == o
            and lemma in plain - {last[k]}
            and not name.lower().endswith(lemma)  # a closed compound already says its kind: "teapot"
            and zipf(lemma) >= max(COMMON, zipf(name.lower()) + 1)
        ]
        if rare and parents:
            rows.append((wnid, name, max(parents, key=zipf), "entry level"))
            continue
        rows.append((wnid, name, last[k], "last word"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wordnet", default="/usr/share/wordnet", help="WordNet 3.0's dict folder (data.noun)")
    parser.add_argument("--out", default=str(TABLE))
    args = parser.parse_args()
    wordnet = Path(args.wordnet)
    if not (wordnet / "data.noun").is_file():
        sys.exit(f"no WordNet in {wordnet}: apt-get install wordnet-base, or pass --wordnet DICT_FOLDER")
    rows = table(wordnet)
    text = "wnid\tname\tword\trule\n" + "".join("\t".join(row) + "\n" for row in rows)
    Path(args.out).write_text(text, encoding="utf-8")
    changed = [(name, word) for _, name, word, rule in rows if rule in ("name and kind", "entry level")]
    print(f"{len(rows)} classes, {len(set(r[2] for r in rows))} words, {len(changed)} from WordNet, in {args.out}")


if __name__ == "__main__":
    main()
