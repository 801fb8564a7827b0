"""Translation with the captioner's decoder: build, fit, generate, evaluate, restore.

Seq2Seq = TextEncoder + the AttentionDecoder the captioner uses. Validation scores greedy (or beam)
translations, never teacher forcing; best.pt is the epoch with the best validation BLEU-4, and after
training it is scored once on the test pairs (RUN/test_scores.json).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from captioner import training
from captioner.config import TranslateConfig
from captioner.data.pairs import SYNTHETIC, Pair, PairSet, collate_pairs, load_splits
from captioner.device import resolve_device
from captioner.errors import DataError
from captioner.files import write_json
from captioner.metrics import nltk_bleu
from captioner.models.registry import build_model, restore
from captioner.models.seq2seq import Seq2Seq
from captioner.training import ShuffledTask, Stage
from captioner.training.steps import steps_per_epoch
from captioner.vocab import Vocab


@torch.no_grad()
def generate(
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
    device = next(model.parameters()).device
    dataset = PairSet(pairs, source_vocab, target_vocab)
    hits = total = 0
    for src, lengths, tgt in DataLoader(dataset, 256, collate_fn=collate_pairs):
        _, alphas = model(src.to(device), lengths, tgt[:, :-1].to(device))  # (B, T, S): step t predicts word t + 1
        alphas = alphas.cpu()
        for b in range(src.size(0)):
            n = int(lengths[b]) - 1  # source words without EOS
            peaks = alphas[b, :n].argmax(-1)  # target words 0 .. n-1
            hits += int((peaks == torch.arange(n - 1, -1, -1)).sum())
            total += n
    return 100 * hits / total


def pair_vocabs(config: TranslateConfig, pairs: list[Pair], resumed: dict | None) -> tuple[Vocab, Vocab]:
    """The source and target vocabularies: the resumed run's, or counted over the training pairs."""
    if resumed is not None:
        return Vocab.from_dict(resumed["source_vocab"]), Vocab.from_dict(resumed["vocab"])
    min_freq = 1 if config.data.train == SYNTHETIC else config.data.min_word_freq
    return Vocab.build((s for s, _ in pairs), min_freq), Vocab.build((t for _, t in pairs), min_freq)


class TranslationTask(ShuffledTask):
    """Sentence pairs: teacher-forced cross-entropy, validation BLEU-4 of free-running translations."""

    best_metric = "val_bleu4"
    headline = {"val_bleu4": "val BLEU-4 {:.1f}", "val_exact": "exact {:.1f}%"}

    def __init__(self, run: training.Run):
        super().__init__(run)
        config = run.config
        self.splits = load_splits(config.data)
        resumed = run.checkpoint["vocabularies"] if run.checkpoint is not None else None
        self.source_vocab, self.target_vocab = pair_vocabs(config, self.splits["train"], resumed)
        self.vocabularies = {"source_vocab": self.source_vocab, "vocab": self.target_vocab}
        self.model = build_model(config, self.vocabularies).to(self.device)
        run.load_weights(self.model)
        dataset = PairSet(self.splits["train"], self.source_vocab, self.target_vocab)
        self.loader = DataLoader(
            dataset,
            config.train.batch_size,
            shuffle=True,
            collate_fn=collate_pairs,
            generator=self.order.generator,
            drop_last=True,
        )
        self.log(
            f"{len(self.splits['train'])} training / {len(self.splits['val'])} validation pairs, vocabularies "
            f"{len(self.source_vocab)} -> {len(self.target_vocab)}, {run.describe(self.model)}, "
            f"attention {'on' if config.model.attention else 'off'}"
        )

    def stages(self) -> list[Stage]:
        steps = steps_per_epoch(len(self.loader.dataset), self.config.train.batch_size)
        return [
            Stage(
                "training",
                lambda epoch, skip: self.order.batches(lambda generator: self.loader, skip),
                self.loss,
                lambda batch: batch[0].size(0),
                steps,
                self.config.train.epochs,
                unit="pairs",
            )
        ]

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, dict]:
        src, lengths, tgt = batch
        src, tgt = src.to(self.device), tgt.to(self.device)
        logits, _ = model(src, lengths, tgt[:, :-1])
        smoothing = self.config.train.label_smoothing
        targets = tgt[:, 1:].flatten()
        loss = nn.functional.cross_entropy(
            logits.flatten(0, 1), targets, ignore_index=Vocab.pad_id, label_smoothing=smoothing
        )
        return loss, {}

    def validate(self, final: bool) -> dict[str, float]:
        val = self.splits["val"]
        sources = [s for s, _ in val]
        beam, max_len = self.config.train.eval_beam_size, self.config.data.max_len + 10
        hypotheses, _ = generate(self.model, sources, self.source_vocab, self.target_vocab, beam, max_len=max_len)
        return score(hypotheses, val)


def fit(config: TranslateConfig, resume: bool = False, log=print) -> Path:
    """Train a translator; write the run folder (captioner.training) and test_scores.json; return best.pt's path.

    With resume, training continues from last.pt exactly where it stopped (weights, optimizer, the shuffling
    generator and the dropout generator)."""
    run = training.start(config, resume, log)
    task = TranslationTask(run)
    best = training.fit(task, run)
    if "test" in task.splits:  # the best checkpoint on the held-out test pairs, once
        evaluate(best, "test", device=str(run.device), output=run.folder.path / "test_scores.json", log=log)
    return best


def evaluate(
    checkpoint: str | Path,
    split: str = "test",
    beam_size: int = 1,
    device: str = "auto",
    output: str | Path | None = None,
    log=None,
) -> dict:
    """BLEU-4 and exact matches (and, on the reversal task, attention alignment) of a split's translations."""
    log = log or (lambda line: print(line, file=sys.stderr))
    model, config, vocabularies = restore(checkpoint, resolve_device(device), kind=TranslateConfig.KIND)
    source_vocab, target_vocab = vocabularies["source_vocab"], vocabularies["vocab"]
    pairs = load_splits(config.data).get(split)
    if pairs is None:
        raise DataError(f"{checkpoint} was trained without a {split!r} file (data.{split} is not set)")
    sources = [s for s, _ in pairs]
    hypotheses, _ = generate(model, sources, source_vocab, target_vocab, beam_size, max_len=config.data.max_len + 10)
    result = {"pairs": len(pairs), **score(hypotheses, pairs)}
    if config.data.train == SYNTHETIC:
        result["alignment"] = reversal_alignment(model, pairs, source_vocab, target_vocab)
    result["examples"] = [
        {"source": " ".join(s), "reference": " ".join(t), "output": " ".join(h)}
        for (s, t), h in list(zip(pairs, hypotheses, strict=True))[:20]
    ]
    if output:
        write_json(output, result)
    aligned = f", attention on the aligned word {result['alignment']:.1f}%" if "alignment" in result else ""
    decoding = "greedy" if beam_size == 1 else f"beam {beam_size}"
    log(
        f"{split} ({len(pairs)} pairs, {decoding}, {checkpoint}): BLEU-4 {result['bleu4']:.2f}, "
        f"exact {result['exact']:.1f}%{aligned}"
    )
    return result
