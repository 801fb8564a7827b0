"""Translator training throughput: sentence pairs per second at hidden size 128, sentences of 10 tokens.

    python scripts/benchmark_translate.py [--hidden 128] [--length 10] [--batch-size 64] [--steps 30]

Times full training steps (forward, backward, clipping, AdamW) of the attention model on random
pairs, after a few warm-up steps, on the machine it runs on.
"""

from __future__ import annotations

import argparse
import time

import torch

from captioner.config import TranslateConfig
from captioner.models.registry import build_model
from captioner.vocab import Vocab


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--length", type=int, default=10, help="source and target tokens per sentence")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = TranslateConfig.from_dict(
        {"model": {"embed_dim": args.hidden, "hidden_dim": args.hidden, "attention_dim": args.hidden}}
    )
    vocab = Vocab(f"w{i}" for i in range(args.vocab - 4))  # args.vocab ids, the 4 special tokens among them
    model = build_model(config, {"source_vocab": vocab, "vocab": vocab}).train()
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    B, T = args.batch_size, args.length
    src = torch.randint(4, args.vocab, (B, T + 1))  # + EOS
    tgt = torch.randint(4, args.vocab, (B, T + 2))  # BOS ... EOS
    lengths = torch.full((B,), T + 1)
    for step in range(args.steps + 5):
        if step == 5:
            start = time.perf_counter()
        logits, _ = model(src, lengths, tgt[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
    seconds = time.perf_counter() - start
    print(
        f"hidden {args.hidden}, {T}-token sentences, batch {B}, {torch.get_num_threads()} threads: "
        f"{args.steps * B / seconds:.0f} sentence pairs/s ({seconds / args.steps * 1000:.1f} ms per step)"
    )


if __name__ == "__main__":
    main()
