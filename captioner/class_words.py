"""Class words: the ImageNet classes a backbone's own classifier names, turned into caption words.

Every torchvision ResNet and EfficientNet-Lite0 keep the 1,000-way ImageNet classifier they were trained
with: a linear layer over the mean of the final feature grid. A convex combination of grid cells (an
attention step's context) is read by the same layer, so applied to the attended context it names what that
step looks at. The decoder (models/decoder.py, class words) turns its 1,000 class probabilities into the
probabilities of caption words with a table (imagenet_words.tsv, made from WordNet by
scripts/class_word_table.py): a class's word is the last word of its name ("tiger cat" -> cat, "sports car" ->
car), so the five cat classes all say "cat"; a name with its kind where the name alone is rare or means
something else first ("monarch" -> "monarch butterfly"); a rare name's common parent ("basenji" -> "dog"); and
OVERRIDES where the last word names something else ("sea lion" is no lion, "hot dog" no dog).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from captioner.text import tokenize
from captioner.vocab import CLASS_PREFIX, Vocab

TABLE = Path(__file__).with_name("imagenet_words.tsv")  # made by scripts/class_word_table.py from WordNet

CLASS_LISTS = ("imagenet",)
# A class word ends a noun phrase: it is the caption's last word, or one of these follows it. Elsewhere the
# same string is an ordinary word ("a frog can jump", "the sign for the letter a", "an orange hat").
PHRASE_ENDS = frozenset(
    "with in on at and or from by near under over behind beside into is are was were has have that which who "
    "can could will may might must should does did wearing holding sitting standing lying flying swimming "
    "eating playing made full".split()
)

# Names whose last word would say something else; the value is the caption word (it may hold a space: it is
# then a word the model can say, and the tokenizer splits it when captions are scored).
OVERRIDES = {
    "tabby": "cat",
    "Madagascar cat": "lemur",
    "sea lion": "sea lion",
    "hot dog": "hot dog",
    "Granny Smith": "apple",
    "ice cream": "ice cream",
    "ice lolly": "ice lolly",
    "piggy bank": "piggy bank",
    "traffic light": "traffic light",
    "walking stick": "stick insect",
    "four-poster": "bed",
    "bicycle-built-for-two": "tandem",
    "Model T": "car",
    "hen-of-the-woods": "mushroom",
    "Mexican hairless": "dog",
    "African grey": "parrot",
    "Band Aid": "plaster",
    "web site": "website",
    "Shih-Tzu": "dog",
    "jack-o'-lantern": "pumpkin",
    "space bar": "keyboard",
    "yellow lady's slipper": "orchid",
    "Dandie Dinmont": "terrier",
    "Boston bull": "terrier",
    "Great Dane": "dog",
    "Saint Bernard": "dog",
    "Brabancon griffon": "dog",
    "English springer": "spaniel",
    "maillot tank suit": "swimsuit",
    "maillot": "swimsuit",
    "half track": "tank",
    "black widow": "spider",
    "crane bird": "crane",
    "rock beauty": "fish",
    "book jacket": "book",
    "meat loaf": "meatloaf",
    "bell cote": "bell tower",
    "hand blower": "hand dryer",
    "carpenter's kit": "toolbox",
    "totem pole": "totem pole",
    "slide rule": "slide rule",
    "remote control": "remote control",
    "hair slide": "hair clip",
    "cash machine": "cash machine",
    "vending machine": "vending machine",
    "sewing machine": "sewing machine",
    "solar dish": "solar dish",
    "toilet tissue": "toilet paper",
    "passenger car": "railway carriage",
    "freight car": "freight wagon",
    "beach wagon": "car",
    "horse cart": "cart",
    "home theater": "television",
    "entertainment center": "cabinet",
    "china cabinet": "cabinet",
    "lab coat": "coat",
    "chain mail": "chain mail",
    "cliff dwelling": "cliff dwelling",
    "drilling platform": "oil rig",
    "space shuttle": "space shuttle",
    "fire engine": "fire engine",
    "tile roof": "roof",
    "steel arch bridge": "bridge",
    "grey whale": "whale",
    # read in the WordNet table (scripts/class_word_table.py), before any captioning run with it
    "television": "television",
    "church": "church",
    "barbershop": "barbershop",
    "confectionery": "sweet shop",
    "toyshop": "toy shop",
    "shoji": "screen",
}


def imagenet_classes() -> list[str]:
    """The 1,000 ImageNet-1k class names, in the order of the classifiers' outputs (torchvision's list)."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)


@cache
def _table() -> dict[str, str]:
    rows = [line.split("\t") for line in TABLE.read_text(encoding="utf-8").splitlines()[1:]]
    return {name: word for _, name, word, _ in rows}


def class_word(name: str) -> str:
    """The caption word a class name is said as: the WordNet table's (imagenet_words.tsv), else OVERRIDES, else
    the last word of the name."""
    return _table().get(name) or OVERRIDES.get(name) or tokenize(name)[-1]


def class_words(names: list[str]) -> list[str]:
    """The caption word of every class, in class order (several classes may share one)."""
    return [class_word(name) for name in names]


def class_list(name: str) -> list[str]:
    """The class names of a named class list (CLASS_LISTS)."""
    if name == "imagenet":
        return imagenet_classes()
    raise ValueError(f"unknown class list {name!r}; choose one of {', '.join(CLASS_LISTS)}")


def mark(tokens: list[str], words: frozenset[str] | set[str]) -> list[str]:
    """Mark the class words of a tokenized caption that end a noun phrase (CLASS_PREFIX + word): those are
    what the classifier names; the rest stay ordinary words."""
    marked = []
    for i, token in enumerate(tokens):
        ends = i + 1 == len(tokens) or tokens[i + 1] in PHRASE_ENDS
        marked.append(CLASS_PREFIX + token if ends and token in words else token)
    return marked


def caption_tokens(caption: str, vocab: Vocab) -> list[str]:
    """A training caption's tokens for a vocabulary: with its class words marked where it has class words."""
    tokens = tokenize(caption)
    words = vocab.class_words
    return mark(tokens, words) if words else tokens
