"""Translation with the captioner's decoder: build, fit, generate, evaluate, restore.

Seq2Seq = TextEncoder + the AttentionDecoder the captioner uses. Validation scores greedy (or beam)
translations, never teacher forcing; best.pt is the epoch with the best validation BLEU-4, and after
training it is scored once on the test pairs (RUN/test_scores.json).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from captioner.checkpoint import load_weights
from captioner.checkpoint import restore as restore_checkpoint
from captioner.config import TranslateConfig
from captioner.data.pairs import SYNTHETIC, Pair, PairSet, collate_pairs, load_splits
from captioner.files import write_json
from captioner.metrics import nltk_bleu
from captioner.models.decoder import AttentionDecoder
from captioner.models.seq2seq import Seq2Seq, TextEncoder
from captioner.training import (
    RunFolder,
    backward_and_step,
    build_scheduler,
    check_loss,
    epoch_checkpoint,
    out_of_time,
    resolve_device,
    resume_epochs,
)
from captioner.vocab import Vocab

KIND = "translator"  # the checkpoints' "kind"


def build(config: TranslateConfig, source_size: int, target_size: int) -> Seq2Seq:
    """An untrained translator between vocabularies of these sizes."""
    m = config.model
    encoder = TextEncoder(source_size, m.embed_dim, m.hidden_dim, m.num_layers, m.cell, m.dropout, m.bidirectional)
    decoder = AttentionDecoder(
        target_size, encoder.out_dim, m.embed_dim, m.hidden_dim, m.attention_dim, m.num_layers, m.cell, m.dropout
    )
    return Seq2Seq(encoder, decoder, m.attention)


def restore(path: str | Path, device="cpu") -> tuple[Seq2Seq, TranslateConfig, Vocab, Vocab]:
    """Rebuild a translator from its checkpoint alone: (model, config, source vocabulary, target vocabulary)."""
    model, config, vocabs = restore_checkpoint(
        path,
        KIND,
        TranslateConfig,
        lambda c, v: build(c, len(v["source_vocab"]), len(v["vocab"])),
        device,
        vocabularies=("source_vocab", "vocab"),
    )
    return model, config, vocabs["source_vocab"], vocabs["vocab"]


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


def train_one_epoch(model, loader, optimizer, schedule, config: TranslateConfig, device, epoch: int) -> dict:
    """One pass over the training pairs: mean loss and throughput."""
    train = config.train
    model.train()
    start, losses, pairs_seen = time.perf_counter(), [], 0
    for src, lengths, tgt in loader:
        src, tgt = src.to(device), tgt.to(device)
        logits, _ = model(src, lengths, tgt[:, :-1])
        loss = nn.functional.cross_entropy(
            logits.flatten(0, 1), tgt[:, 1:].flatten(), ignore_index=Vocab.pad_id, label_smoothing=train.label_smoothing
        )
        losses.append(loss.item())
        check_loss(losses[-1], f"epoch {epoch + 1}, batch {len(losses)}")
        backward_and_step(loss, optimizer, model.parameters(), train.grad_clip)
        schedule.step()
        pairs_seen += src.size(0)
    seconds = time.perf_counter() - start
    return {"loss": sum(losses) / len(losses), "pairs_per_s": pairs_seen / seconds, "seconds": seconds}


def pair_vocabs(config: TranslateConfig, pairs: list[Pair], checkpoint: dict | None) -> tuple[Vocab, Vocab]:
    """The source and target vocabularies: the resumed run's, or counted over the training pairs."""
    if checkpoint is not None:
        return Vocab.from_dict(checkpoint["source_vocab"]), Vocab.from_dict(checkpoint["vocab"])
    min_freq = 1 if config.data.train == SYNTHETIC else config.data.min_word_freq
    return Vocab.build((s for s, _ in pairs), min_freq), Vocab.build((t for _, t in pairs), min_freq)


def fit(config: TranslateConfig, resume: bool = False, log=print) -> Path:
    """Train a translator; write the run folder (training.RunFolder) and test_scores.json; return best.pt's path.

    With resume, training continues from last.pt exactly where it stopped (weights, optimizer, schedule,
    the shuffling generator and the dropout generator).
    """
    train = config.train
    device = resolve_device(train.device)
    folder = RunFolder(train.run_dir)
    checkpoint = folder.resume_from(KIND) if resume else None
    torch.manual_seed(train.seed)
    splits = load_splits(config.data)
    source_vocab, target_vocab = pair_vocabs(config, splits["train"], checkpoint)
    model = build(config, len(source_vocab), len(target_vocab)).to(device)
    if checkpoint is not None:
        load_weights(model, checkpoint["model"], folder.last)
    dataset = PairSet(splits["train"], source_vocab, target_vocab)
    generator = torch.Generator().manual_seed(0)
    loader = DataLoader(
        dataset, train.batch_size, shuffle=True, collate_fn=collate_pairs, generator=generator, drop_last=True
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.learning_rate)
    schedule = build_scheduler(optimizer, train, len(loader))
    progress = {"epoch": -1, "best_bleu4": -1.0, "elapsed": 0.0}
    if checkpoint is not None:
        progress = resume_epochs(checkpoint, optimizer, schedule, generator, device, progress)
        log(f"resuming {folder.last} at epoch {progress['epoch'] + 2}")
    vocabs = {"source_vocab": source_vocab, "vocab": target_vocab}
    folder.start(config, vocabs, progress["epoch"] + 1 if checkpoint is not None else None)
    parameters = sum(p.numel() for p in model.parameters())
    log(
        f"{len(splits['train'])} training / {len(splits['val'])} validation pairs, vocabularies "
        f"{len(source_vocab)} -> {len(target_vocab)}, {parameters / 1e6:.2f} M parameters, "
        f"attention {'on' if config.model.attention else 'off'}, device {device}"
    )
    for epoch in range(progress["epoch"] + 1, train.epochs):
        stats = train_one_epoch(model, loader, optimizer, schedule, config, device, epoch)
        progress["epoch"], progress["elapsed"] = epoch, progress["elapsed"] + stats.pop("seconds")
        sources = [s for s, _ in splits["val"]]
        hypotheses, _ = generate(
            model, sources, source_vocab, target_vocab, train.eval_beam_size, max_len=config.data.max_len + 10
        )
        scores = score(hypotheses, splits["val"])
        row = {"epoch": epoch + 1, **stats, "elapsed": progress["elapsed"]}
        row.update({f"val_{k}": v for k, v in scores.items()})
        folder.log_metrics(row)
        log(
            f"epoch {epoch + 1}: loss {row['loss']:.3f}, val BLEU-4 {scores['bleu4']:.1f}, exact "
            f"{scores['exact']:.1f}%, {row['pairs_per_s']:.0f} pairs/s, {progress['elapsed'] / 60:.1f} min"
        )
        best = scores["bleu4"] > progress["best_bleu4"]
        progress["best_bleu4"] = max(progress["best_bleu4"], scores["bleu4"])
        payload = epoch_checkpoint(
            KIND, model, config, vocabs, row, optimizer, schedule, generator, device, progress
        )  # the output vocabulary is "vocab" in every task's checkpoint, the source's "source_vocab"
        folder.save(payload, best=best)
        if out_of_time(train.max_minutes, progress["elapsed"], log):
            break
    if "test" in splits:  # the best checkpoint on the held-out test pairs, once
        evaluate(folder.best, "test", device=str(device), output=folder.path / "test_scores.json", log=log)
    return folder.best


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
    model, config, source_vocab, target_vocab = restore(checkpoint, resolve_device(device))
    pairs = load_splits(config.data).get(split)
    if pairs is None:
        from captioner.errors import DataError

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
