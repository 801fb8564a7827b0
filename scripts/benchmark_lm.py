"""Char LM training throughput: characters per second of full training steps, for one or more widths.

    python scripts/benchmark_lm.py [--hidden 352 384] [--batch-size 32] [--seq-len 64] [--amp bf16] [--repeats 3]

Times the training step of `captioner lm train` (bf16 autocast, forward, backward, clipping, AdamW) on
random characters, after a few warm-up steps. The widths take turns, `--repeats` times over, so that a
shared machine whose speed drifts (this project's 2-core VM does) slows them alike; compare widths
within one call, not across calls.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from captioner import training
from captioner.config import LMConfig
from captioner.config.base import CoreSection
from captioner.models.char_lm import CharLM
from captioner.tasks.char_lm import CharLMTask


class RandomChars(CharLMTask):
    """The char LM task's training step (its loss, the state carried over) on a given model, reading one batch
    of random characters again and again: no corpus, no validation."""

    def __init__(self, run: training.Run, model: CharLM):
        training.Task.__init__(self, run)
        self.model, self.vocabularies, self.ema, self.carried = model, {}, None, None

    def stages(self) -> list[training.Stage]:  # no batches of its own: chars_per_second hands step the batch
        return [training.Stage("training", None, self.loss, lambda batch: batch[1].numel(), 1, None, unit="chars")]


def chars_per_second(model: CharLM, batch_size: int, seq_len: int, amp: str, steps: int) -> float:
    ids = torch.randint(0, model.out.out_features, (batch_size, seq_len + 1))
    with tempfile.TemporaryDirectory(prefix="benchmark-lm-") as work:
        train = {"run_dir": work, "batch_size": batch_size, "seq_len": seq_len, "learning_rate": 1e-3, "amp": amp}
        config = LMConfig.from_dict({"train": train})
        run = training.Run(config, torch.device("cpu"), training.RunFolder(work), None, training.silent)
        trainer = training.Trainer(RandomChars(run, model), run)  # the one training loop's optimizer and step
        stage = trainer.stages[0]
        for step in range(steps + 5):
            if step == 5:
                start = time.perf_counter()
            trainer.step(stage, (ids[:, :-1], ids[:, 1:]))  # forward, loss, backward, clipping, AdamW
        return steps * batch_size * seq_len / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[352, 384])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--cell", default="lstm", choices=["lstm", "gru", "rnn"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--amp", default="bf16", choices=["none", "bf16"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    speeds: dict[int, list[float]] = {hidden: [] for hidden in args.hidden}
    for _ in range(args.repeats):
        for hidden in args.hidden:
            model = CharLM(87, 64, CoreSection(args.cell, hidden, args.layers)).train()  # 87: Shakespeare's characters
            speeds[hidden].append(chars_per_second(model, args.batch_size, args.seq_len, args.amp, args.steps))
    print(
        f"{args.layers}-layer {args.cell}, batch {args.batch_size} x {args.seq_len}, {args.amp}, "
        f"{torch.get_num_threads()} threads (chars/s, each repeat):"
    )
    for hidden, values in speeds.items():
        listed = ", ".join(f"{value:,.0f}" for value in values)
        print(f"  width {hidden}: {listed} (median {sorted(values)[len(values) // 2]:,.0f})")


if __name__ == "__main__":
    main()
