"""The character-level language model: the training task (truncated BPTT) and evaluate; models/char_lm.sample_text
writes text with a trained model.

Training walks `batch_size` parallel streams of the text in chunks of `seq_len` characters; the
recurrent state at the end of one chunk starts the next (detached, so gradients flow back at most
`seq_len` steps). Validation carries the state the same way over the held-out tail of the text and
reports nats and bits per character. Training runs until its budget is spent (train.max_minutes,
train.max_steps or train.epochs), validating every train.eval_every_minutes on the first train.eval_chars
held-out characters; at the end the final weights are scored on all of them and saved as best.pt.
"""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

from captioner import training
from captioner.checkpoint import load_weights
from captioner.config import LMConfig
from captioner.data.corpus import char_vocab, chunks, lm_texts, streams
from captioner.device import resolve_device
from captioner.errors import CheckpointError
from captioner.models.char_lm import CharLM
from captioner.models.registry import build_model, restore
from captioner.training import Stage, Task
from captioner.vocab import Vocab


@torch.no_grad()
def nats_per_char(
    model: CharLM, ids: Tensor, device: torch.device, seq_len: int = 256, batch_size: int = 16
) -> tuple[float, int]:
    """Mean cross-entropy (nats per character) over ids, state carried across chunks, and how many characters
    it scored: the text is cut into parallel streams, whose first characters are context only and whose
    ragged end (fewer than one per stream) is left out."""
    model.eval()
    data = streams(ids, min(batch_size, max(1, ids.numel() // (2 * seq_len)))).to(device)
    total, count, state = 0.0, 0, None
    for inputs, targets in chunks(data, seq_len):
        logits, state = model.run(inputs, state)
        total += nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum").item()
        count += targets.numel()
    model.train()
    return total / count, count


class CharLMTask(Task):
    """A text as parallel streams: truncated BPTT with the state carried, validation in nats per character."""

    headline = {"val_nats": "val {:.3f} nats/char", "val_bits": "{:.3f} bits/char", "val_nats_raw": "raw {:.3f}"}

    def __init__(self, run: training.Run):
        super().__init__(run)
        config, train = run.config, run.config.train
        train_text, val_text = lm_texts(config.data)
        if run.checkpoint is not None:
            vocab = Vocab.from_dict(run.checkpoint["vocabularies"]["vocab"])
        else:
            vocab = char_vocab(train_text)
        self.vocabularies = {"vocab": vocab}
        self.val_ids = torch.tensor(vocab.encode(list(val_text)))
        self.model: CharLM = build_model(config, self.vocabularies).to(self.device)
        run.load_weights(self.model)
        self.ema = None
        if train.ema_decay is not None:
            average = torch.optim.swa_utils.get_ema_multi_avg_fn(train.ema_decay)
            self.ema = torch.optim.swa_utils.AveragedModel(self.model, multi_avg_fn=average)
        self.data = streams(torch.tensor(vocab.encode(list(train_text))), train.batch_size).to(self.device)
        self.carried = None  # the recurrent state carried into the next chunk
        self.log(
            f"{len(train_text):,} training / {len(val_text):,} validation characters, vocabulary {len(vocab)}, "
            f"{run.describe(self.model)}, {self.steps_per_epoch()} steps per epoch"
        )

    def steps_per_epoch(self) -> int:
        return math.ceil((self.data.size(1) - 1) / self.config.train.seq_len)

    def stages(self) -> list[Stage]:
        train = self.config.train
        return [
            Stage(
                "training",
                self.batches,
                self.loss,
                lambda batch: batch[1].numel(),
                self.steps_per_epoch(),
                train.epochs,
                unit="chars",
                validate_every=train.eval_every_minutes,
            )
        ]

    def batches(self, epoch: int, skip: int):
        if skip == 0:
            self.carried = None  # a new pass over the streams starts from zero state
        yield from itertools.islice(chunks(self.data, self.config.train.seq_len), skip, None)

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict]:
        """The next characters' cross-entropy from the carried state; the new state is carried, not its history."""
        inputs, targets = batch
        logits, state = model.run(inputs, self.carried)
        self.carried = tuple(s.detach() for s in state)
        return nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten()), {}

    def after_step(self) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def validate(self, final: bool) -> dict[str, float]:
        """Nats and bits per character of the saved weights (the average, with train.ema_decay) on the first
        train.eval_chars held-out characters, or on all of them at the end."""
        eval_chars = self.config.train.eval_chars
        ids = self.val_ids if final or not eval_chars else self.val_ids[:eval_chars]
        nats, scored = nats_per_char(self.saved_model(), ids, self.device)
        scores = {"nats": nats, "bits": nats / math.log(2), "chars": scored}
        if self.ema is not None:
            scores["nats_raw"] = nats_per_char(self.model, ids, self.device)[0]  # the trained weights themselves
        return scores

    def saved_model(self) -> CharLM:
        return self.model if self.ema is None else self.ema.module

    def weights(self) -> dict:
        return self.saved_model().state_dict()

    def state_dict(self) -> dict:
        return {
            "carried": None if self.carried is None else [s.cpu() for s in self.carried],
            "ema": None if self.ema is None else self.ema.state_dict(),
            "raw": None if self.ema is None else self.model.state_dict(),  # the checkpoint's weights: the average
        }

    def load_state_dict(self, state: dict) -> None:
        carried = state.get("carried")
        self.carried = None if carried is None else tuple(s.to(self.device) for s in carried)
        if self.ema is not None:
            if state.get("ema") is None:
                raise CheckpointError("the run resumed kept no weight average: train.ema_decay differs")
            load_weights(self.model, state["raw"], "the resumed checkpoint's raw weights")
            self.ema.load_state_dict(state["ema"])


def fit(config: LMConfig, resume: bool = False, log=print) -> Path:
    """Train a CharLM; write the run folder (captioner.training); return best.pt's path.

    With resume, training continues from last.pt (the latest validation) where it stopped: weights, the
    weight average, optimizer, loss scale, dropout generator, the position in the streams and the
    recurrent state carried there. With train.max_steps the result equals an uninterrupted run's; with
    train.max_minutes the budget counts the training seconds of both parts.
    """
    run = training.start(config, resume, log)
    return training.fit(CharLMTask(run), run)


def evaluate(checkpoint: str | Path, device: str = "auto", log=None) -> dict:
    """Nats and bits per character of a trained model on all of its corpus's held-out text."""
    log = log or (lambda line: print(line, file=sys.stderr))
    device = resolve_device(device)
    model, config, vocabularies = restore(checkpoint, device, kind=LMConfig.KIND)
    vocab = vocabularies["vocab"]
    _, val_text = lm_texts(config.data)
    nats, scored = nats_per_char(model, torch.tensor(vocab.encode(list(val_text))), device)
    bits = nats / math.log(2)
    log(f"{checkpoint}: {nats:.3f} nats/char = {bits:.3f} bits/char on {scored:,} of {len(val_text):,} held-out chars")
    return {"checkpoint": str(checkpoint), "val_nats": nats, "val_bits": bits, "val_chars": scored}
