"""Decoder throughput at the COCO recipe's shapes, from cached features (no CNN), on this machine.

    python scripts/benchmark_decoder.py

Memory 196 x 2048 (ResNet-101, 14 x 14), embedding / attention / hidden 512, vocabulary 10,000, batch
32, 22-token captions: training steps (forward, backward, AdamW) in captions/s, and beam search
(beam 3, 20 steps, the 32 images as one batch) in images/s. Random weights; fp32.
"""

from __future__ import annotations

import time

import torch

from captioner.models.captioner import caption_loss
from captioner.models.decoder import AttentionDecoder


def main() -> None:
    torch.manual_seed(0)
    decoder = AttentionDecoder(10_000, 2048, 512, 512, 512)
    optimizer = torch.optim.AdamW(decoder.parameters(), 4e-4)
    B, T, P = 32, 22, 196
    memory, tokens = torch.randn(B, P, 2048), torch.randint(4, 10_000, (B, T + 1))
    for step in range(5):
        if step == 2:
            start = time.perf_counter()
        logits, alphas = decoder(memory, tokens[:, :-1])
        loss, _ = caption_loss(logits, tokens[:, 1:], alphas, 1.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    per_batch = (time.perf_counter() - start) / 3
    print(f"decoder training from cached features: {B / per_batch:.1f} captions/s ({per_batch * 1000:.0f} ms/batch)")
    decoder.eval()
    start = time.perf_counter()
    decoder.decode(torch.randn(B, P, 2048), None, bos_id=1, eos_id=2, beam_size=3, max_len=20)
    print(f"beam search, beam 3, 20 steps: {B / (time.perf_counter() - start):.1f} images/s")


if __name__ == "__main__":
    main()
