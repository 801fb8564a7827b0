"""Self-critical sequence training (Rennie et al. 2017): the captioner's stage after cross-entropy.

For every training image the model samples `scst.samples` captions (under the decode section's sentence
rules, so the policy is the rule-masked distribution); each caption's reward is its CIDEr-D against the
image's references, with document frequencies from all training references (rewards.CiderD); its
advantage is the reward minus a baseline: the mean reward of the image's other samples ("mean", the
"new self-critical" baseline of Luo 2020) or the reward of the image's greedy caption ("greedy", Rennie et
al.). The loss is the negative advantage-weighted log-probability of the sampled words, each word's
log-probability taken under the same rule mask the sampling used, averaged over the sampled words.

Dropout is off while sampling and while scoring the samples (the model is in eval mode), so the
gradient is that of the policy that drew them. Every statistic of the rewards goes into metrics.jsonl.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from captioner.config import Config
from captioner.data.manifest import ImageRecord, collate_images
from captioner.decoding import Rules, sample
from captioner.errors import ConfigError
from captioner.models.captioner import Captioner
from captioner.rewards import CiderD
from captioner.text import tokenize
from captioner.training import backward_and_step, check_loss
from captioner.vocab import Vocab


def check(config: Config) -> None:
    """Settings that cannot work, refused before training starts."""
    scst = config.scst
    if scst.epochs < 0 or scst.samples < 1 or scst.batch_size < 1 or scst.max_len < 1:
        raise ConfigError("scst.epochs must be >= 0 and scst.samples, batch_size and max_len >= 1")
    if scst.baseline not in ("mean", "greedy"):
        raise ConfigError(f"scst.baseline must be mean or greedy, not {scst.baseline!r}")
    if scst.baseline == "mean" and scst.samples < 2:
        raise ConfigError("scst.baseline mean compares each sample with the others: set scst.samples >= 2")


def sequence_log_probs(logits: Tensor, targets: Tensor, banned: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Per-word log-probabilities (N, T) of targets under logits (N, T, V), banned (N, T, V) tokens masked out
    (the distribution the samples were drawn from), the mask of real words (N, T), and each position's
    entropy (N, T)."""
    logits = logits.float()
    if banned is not None:
        logits = logits.masked_fill(banned, float("-inf"))
    log_probs = F.log_softmax(logits, dim=-1)
    mask = targets != Vocab.pad_id
    picked = log_probs.gather(2, targets.unsqueeze(-1)).squeeze(-1)
    picked = torch.where(mask, picked, torch.zeros_like(picked))  # PAD positions: -inf under the rules
    entropy = torch.special.entr(log_probs.exp()).sum(-1)
    return picked, mask, entropy


def scst_loss(word_log_probs: Tensor, mask: Tensor, advantages: Tensor) -> Tensor:
    """-sum(advantage * log p(word)) over the sampled words, divided by their number."""
    weighted = advantages.unsqueeze(1) * word_log_probs * mask
    return -weighted.sum() / mask.sum().clamp(min=1)


def baselines(rewards: Tensor, kind: str, greedy: Tensor | None = None) -> Tensor:
    """rewards (B, n) of n samples per image -> each sample's baseline (B, n): the mean of the image's other
    samples, or its greedy caption's reward greedy (B,)."""
    if kind == "greedy":
        return greedy.unsqueeze(1).expand_as(rewards)
    n = rewards.size(1)
    return (rewards.sum(1, keepdim=True) - rewards) / (n - 1)


def padded(sequences: list[list[int]], device) -> tuple[Tensor, Tensor]:
    """Word lists -> inputs BOS w1 .. wn and targets w1 .. wn EOS, PAD-filled (N, T)."""
    length = max(map(len, sequences)) + 1
    inputs = torch.full((len(sequences), length), Vocab.pad_id, dtype=torch.long)
    targets = torch.full((len(sequences), length), Vocab.pad_id, dtype=torch.long)
    for i, words in enumerate(sequences):
        inputs[i, : len(words) + 1] = torch.tensor([Vocab.bos_id, *words])
        targets[i, : len(words) + 1] = torch.tensor([*words, Vocab.eos_id])
    return inputs.to(device), targets.to(device)


LOW_ENTROPY = 0.05  # nats per sampled word: below it, an image's samples are nearly all the same caption


def warnings(stats: dict) -> list[str]:
    """What an epoch's statistics say may be going wrong (the known failure modes of self-critical training)."""
    found = []
    if stats["entropy"] < LOW_ENTROPY:
        found.append(
            f"entropy {stats['entropy']:.3f} nats per word: the samples of an image barely differ, so the "
            f"advantages are near zero and there is little to learn (a model that reproduces its training "
            f"captions; start from fewer cross-entropy epochs)"
        )
    if stats["advantage_abs"] < 1e-3 * max(stats["reward"], 1e-9):
        found.append("the advantages are near zero: every sample of an image scores the same reward")
    return found


class Trainer:
    """One SCST epoch at a time over the training images (cached grids or images)."""

    def __init__(self, config: Config, model: Captioner, vocab: Vocab, records: list[ImageRecord], optimizer):
        check(config)
        self.config, self.model, self.vocab, self.optimizer = config, model, vocab, optimizer
        self.references = [[tokenize(caption) for caption in record.captions] for record in records]
        self.cider = CiderD(self.references)

    def rewards(self, sequences: list[list[int]], images: list[int]) -> Tensor:
        """CIDEr-D (0-10) of each caption (word ids) against its image's training references."""
        scores = [
            self.cider.score(self.vocab.decode(words), self.references[image])
            for words, image in zip(sequences, images, strict=True)
        ]
        return torch.tensor(scores)

    def epoch(self, dataset: Dataset, epoch: int, device: torch.device, description: str = "scst") -> dict:
        """Train one epoch; returns its statistics (means over the epoch's steps)."""
        config, scst, model = self.config, self.config.scst, self.model
        for group in self.optimizer.param_groups:
            group["lr"] = scst.learning_rate
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(config.train.seed * 7919 + epoch))
        loader = DataLoader(dataset, scst.batch_size, sampler=order.tolist(), collate_fn=collate_images)
        generator = torch.Generator(device=device).manual_seed(config.train.seed * 104729 + epoch)
        _, rules = model.decoding(config.decode)
        totals: dict[str, float] = {}
        steps = images_seen = 0
        start = time.perf_counter()
        model.eval()  # no dropout: the samples and their log-probabilities come from one policy
        for inputs, indices in tqdm(loader, desc=description, unit="batch", leave=False, disable=None):
            stats = self.step(inputs.to(device), indices, rules, generator)
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + value
            steps += 1
            images_seen += len(indices)
            check_loss(stats["loss"], f"{description}, batch {steps}")
        seconds = time.perf_counter() - start
        row = {key: value / max(steps, 1) for key, value in totals.items()}
        row.update(seconds=seconds, images_per_s=images_seen / seconds if seconds > 0 else 0.0)
        return row

    def step(self, inputs: Tensor, indices: list[int], rules: Rules, generator: torch.Generator) -> dict:
        """Sample, score, and take one policy-gradient step for a batch of images."""
        scst, model, decoder = self.config.scst, self.model, self.model.decoder
        n, B = scst.samples, inputs.size(0)
        memory = model.encoder(inputs)  # with gradients into the backbone only when it is fine-tuned
        repeated = memory.repeat_interleave(n, 0)
        with torch.no_grad():
            attended = decoder.prepare(repeated)
            start = torch.full((B * n,), Vocab.bos_id, dtype=torch.long, device=memory.device)
            drawn = sample(
                lambda tokens, state: decoder.step(tokens, state, attended),
                decoder.init_state(repeated),
                start,
                scst.max_len,
                Vocab.eos_id,
                generator=generator,
                rules=rules,
                keep_banned=True,  # the masks the words are scored under below
            )
            images = [index for index in indices for _ in range(n)]
            rewards = self.rewards(drawn.tokens, images).view(B, n)
            greedy = None
            if scst.baseline == "greedy":
                greedy_tokens = decoder.decode(
                    memory.detach(), None, Vocab.bos_id, Vocab.eos_id, 1, scst.max_len, rules=rules
                )
                greedy = self.rewards(greedy_tokens.tokens, list(indices))
            baseline = baselines(rewards, scst.baseline, greedy)
        advantages = (rewards - baseline).view(-1).to(memory.device)
        sequence_inputs, targets = padded(drawn.tokens, memory.device)
        logits, _ = decoder(repeated, sequence_inputs)
        word_log_probs, mask, entropy = sequence_log_probs(logits, targets, drawn.banned)
        loss = scst_loss(word_log_probs, mask, advantages)
        backward_and_step(loss, self.optimizer, model.parameters(), self.config.train.grad_clip)
        words = mask.sum(1).float() - 1  # the ending is not a word
        return {
            "loss": loss.item(),
            "reward": rewards.mean().item(),
            "reward_std": rewards.std().item() if rewards.numel() > 1 else 0.0,
            "baseline": baseline.mean().item(),
            "advantage_abs": advantages.abs().mean().item(),
            "entropy": (entropy * mask).sum().item() / mask.sum().item(),
            "sample_words": words.mean().item(),
            **({"greedy_reward": greedy.mean().item()} if greedy is not None else {}),
        }
