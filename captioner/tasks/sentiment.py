"""A text's sentiment, many to one: build, fit, evaluate, restore, generate (data/sentiment.py makes the data).

The classifier (models/sentiment.TextClassifier) reads the whole text with a bidirectional RecurrentCore
and pools it by attention (a learnt query) or by its final states. It is measured against a bag of words
and word pairs under logistic regression (models/sentiment.BagOfNgrams), trained here on the same split.
best.pt is the epoch with the best validation macro-F1; after training, the model and the baseline are
scored once on the test texts (RUN/test_scores.json).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from captioner import training
from captioner.config import SentimentConfig
from captioner.data.sentiment import LABELS, read_split, tokenize_text
from captioner.device import resolve_device
from captioner.files import write_json
from captioner.models.registry import build_model, restore
from captioner.models.sentiment import BagOfNgrams, TextClassifier
from captioner.training import ShuffledTask, Stage
from captioner.vocab import Vocab


def scores(predicted: list[int], gold: list[int]) -> dict[str, float]:
    """Accuracy, macro-F1 (the mean of the classes' F1) and each class's F1, in percent."""
    result = {"accuracy": 100 * sum(p == g for p, g in zip(predicted, gold, strict=True)) / len(gold)}
    f1s = []
    for c, label in enumerate(LABELS):
        tp = sum(p == c and g == c for p, g in zip(predicted, gold, strict=True))
        fp = sum(p == c and g != c for p, g in zip(predicted, gold, strict=True))
        fn = sum(p != c and g == c for p, g in zip(predicted, gold, strict=True))
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        result[f"f1_{label}"] = 100 * f1
        f1s.append(f1)
    result["macro_f1"] = 100 * sum(f1s) / len(f1s)
    return result


def encode(texts: list[str], vocab: Vocab, max_len: int) -> list[list[int]]:
    """Token ids of each text, cut at max_len; a text without tokens is one <unk>."""
    return [vocab.encode(tokenize_text(text)[:max_len]) or [vocab.unk_id] for text in texts]


def batch(ids: list[list[int]]) -> tuple[Tensor, Tensor]:
    """Padded (B, T) ids and lengths (B,)."""
    lengths = torch.tensor([len(row) for row in ids])
    tokens = torch.zeros(len(ids), int(lengths.max()), dtype=torch.long)
    for i, row in enumerate(ids):
        tokens[i, : len(row)] = torch.tensor(row)
    return tokens, lengths


@torch.no_grad()
def generate(model: TextClassifier, ids: list[list[int]], batch_size: int = 256) -> tuple[Tensor, list[Tensor] | None]:
    """Class probabilities (N, C) of encoded texts and, with attention pooling, each text's word weights."""
    model.eval()
    device = next(model.parameters()).device
    probabilities, weights = [], []
    for start in range(0, len(ids), batch_size):
        tokens, lengths = batch(ids[start : start + batch_size])
        logits, alpha = model(tokens.to(device), lengths)
        probabilities.append(logits.float().softmax(-1).cpu())
        if alpha is not None:
            weights += [alpha[i, :n].cpu() for i, n in enumerate(lengths.tolist())]
    return torch.cat(probabilities), weights or None


class SentimentTask(ShuffledTask):
    """Labelled texts: cross-entropy of the label, validation accuracy and macro-F1."""

    best_metric = "val_macro_f1"
    headline = {"val_accuracy": "val accuracy {:.1f}", "val_macro_f1": "macro-F1 {:.1f}"}

    def __init__(self, run: training.Run):
        super().__init__(run)
        config = run.config
        training_texts, validation = read_split(config.data.root, "train"), read_split(config.data.root, "val")
        if run.checkpoint is not None:
            vocab = Vocab.from_dict(run.checkpoint["vocabularies"]["vocab"])
        else:
            vocab = Vocab.build((tokenize_text(t) for _, t in training_texts), min_freq=config.data.min_word_freq)
        self.vocabularies = {"vocab": vocab}
        max_len = config.data.max_len
        self.ids = encode([t for _, t in training_texts], vocab, max_len)
        self.labels = torch.tensor([c for c, _ in training_texts]).to(self.device)
        self.val_ids, self.val_labels = encode([t for _, t in validation], vocab, max_len), [c for c, _ in validation]
        self.model = build_model(config, self.vocabularies).to(self.device)
        run.load_weights(self.model)
        counts = Counter(LABELS[c] for c, _ in training_texts)
        self.log(
            f"{len(self.ids)} training / {len(self.val_ids)} validation texts "
            f"({', '.join(f'{counts[k]} {k}' for k in LABELS)}), vocabulary {len(vocab)}, "
            f"{run.describe(self.model)}, {config.model.pooling} pooling"
        )

    def stages(self) -> list[Stage]:
        return [self.index_stage(len(self.ids), self.loss, "texts")]

    def loss(self, model, index: Tensor) -> tuple[Tensor, dict]:
        tokens, lengths = batch([self.ids[i] for i in index.tolist()])
        return F.cross_entropy(model(tokens.to(self.device), lengths)[0], self.labels[index.to(self.device)]), {}

    def validate(self, final: bool) -> dict[str, float]:
        probabilities, _ = generate(self.model, self.val_ids)
        return scores(probabilities.argmax(-1).tolist(), self.val_labels)


def fit(config: SentimentConfig, resume: bool = False, log=print) -> Path:
    """Train a classifier; write the run folder and test_scores.json (with the baseline's); return best.pt."""
    run = training.start(config, resume, log)
    best = training.fit(SentimentTask(run), run)
    evaluate(best, "test", device=str(run.device), output=run.folder.path / "test_scores.json", log=log)
    return best


def ngrams(tokens: list[str]) -> list[str]:
    """The words and word pairs of a text, each once."""
    return list(dict.fromkeys(tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:], strict=False)]))


def baseline(root: str | Path, split: str = "test", min_count: int = 2, seed: int = 0, log=None) -> dict:
    """The bag-of-words-and-pairs logistic regression: trained on train, its epoch and L2 weight chosen by
    validation macro-F1, scored on `split`."""
    log = log or (lambda line: None)
    torch.manual_seed(seed)
    data = {name: read_split(root, name) for name in ("train", "val", split)}
    counts = Counter(g for _, text in data["train"] for g in ngrams(tokenize_text(text)))
    index = {g: i for i, g in enumerate(g for g, n in counts.items() if n >= min_count)}

    def features(examples):
        rows = [[index[g] for g in ngrams(tokenize_text(text)) if g in index] for _, text in examples]
        offsets = torch.tensor([0] + [len(r) for r in rows[:-1]]).cumsum(0)
        return torch.tensor([i for r in rows for i in r], dtype=torch.long), offsets, [c for c, _ in examples]

    train_ids, train_offsets, train_labels = features(data["train"])
    lengths = torch.diff(torch.cat([train_offsets, torch.tensor([len(train_ids)])]))
    starts, gold = train_offsets, torch.tensor(train_labels)
    best = None
    for decay in (0.0, 1e-4, 1e-3):
        model = BagOfNgrams(len(index), len(LABELS))
        optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
        for epoch in range(10):
            for part in torch.randperm(len(gold)).split(256):
                ids = torch.cat([train_ids[starts[i] : starts[i] + lengths[i]] for i in part.tolist()])
                offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths[part][:-1].cumsum(0)])
                loss = F.cross_entropy(model(ids, offsets), gold[part])
                loss = loss + decay * model.weights.weight.pow(2).sum()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                val_ids, val_offsets, val_labels = features(data["val"])
                val = scores(model(val_ids, val_offsets).argmax(-1).tolist(), val_labels)
            if best is None or val["macro_f1"] > best[0]:
                best = (val["macro_f1"], decay, epoch + 1, {k: v.clone() for k, v in model.state_dict().items()})
    model.load_state_dict(best[3])
    with torch.no_grad():
        ids, offsets, labels = features(data[split])
        result = scores(model(ids, offsets).argmax(-1).tolist(), labels)
    result.update(features=len(index), l2=best[1], epochs=best[2], val_macro_f1=best[0])
    log(f"baseline (logistic regression on {len(index)} words and pairs): {split} macro-F1 {result['macro_f1']:.2f}")
    return result


def evaluate(
    checkpoint: str | Path,
    split: str = "test",
    device: str = "auto",
    output: str | Path | None = None,
    with_baseline: bool = True,
    log=None,
) -> dict:
    """Accuracy and macro-F1 of a split's texts (and the baseline's); with attention, the words weighed most."""
    log = log or (lambda line: print(line, file=sys.stderr))
    model, config, vocabularies = restore(checkpoint, resolve_device(device), kind=SentimentConfig.KIND)
    vocab = vocabularies["vocab"]
    examples = read_split(config.data.root, split)
    ids = encode([t for _, t in examples], vocab, config.data.max_len)
    probabilities, weights = generate(model, ids)
    predicted = probabilities.argmax(-1).tolist()
    result = {"split": split, "texts": len(examples), "pooling": config.model.pooling}
    result["model"] = scores(predicted, [c for c, _ in examples])
    if with_baseline:
        result["baseline"] = baseline(config.data.root, split)
    if weights is not None:  # the first four texts of each label
        shown = {i for c in range(len(LABELS)) for i in [j for j, (g, _) in enumerate(examples) if g == c][:4]}
        result["examples"] = [
            {
                "text": text,
                "label": LABELS[gold],
                "predicted": LABELS[predicted[i]],
                "top_words": heaviest(tokenize_text(text)[: config.data.max_len], weights[i]),
            }
            for i, (gold, text) in enumerate(examples)
            if i in shown
        ]
    if output:
        write_json(output, result)
    line = f"{split} ({len(examples)} texts, {checkpoint}): accuracy {result['model']['accuracy']:.2f}, macro-F1 "
    line += f"{result['model']['macro_f1']:.2f}"
    if with_baseline:
        line += (
            f"; baseline accuracy {result['baseline']['accuracy']:.2f}, macro-F1 {result['baseline']['macro_f1']:.2f}"
        )
    log(line)
    return result


def heaviest(tokens: list[str], weights: Tensor, count: int = 3) -> list[tuple[str, float]]:
    """The `count` words with the most attention, with their weights."""
    if not tokens:
        return []
    top = weights[: len(tokens)].topk(min(count, len(tokens)))
    return [(tokens[i], round(float(w), 3)) for w, i in zip(top.values, top.indices.tolist(), strict=True)]


def classify(checkpoint: str | Path, texts: list[str], device: str = "auto") -> list[dict]:
    """Each text's label, class probabilities and (attention pooling) the words weighed most."""
    model, config, vocabularies = restore(checkpoint, resolve_device(device), kind=SentimentConfig.KIND)
    vocab = vocabularies["vocab"]
    probabilities, weights = generate(model, encode(texts, vocab, config.data.max_len))
    results = []
    for i, text in enumerate(texts):
        entry = {"text": text, "label": LABELS[int(probabilities[i].argmax())]}
        entry["probabilities"] = {label: round(float(p), 4) for label, p in zip(LABELS, probabilities[i], strict=True)}
        if weights is not None:
            entry["top_words"] = heaviest(tokenize_text(text)[: config.data.max_len], weights[i])
        results.append(entry)
    return results
