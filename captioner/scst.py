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

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from captioner.config import Config
from captioner.data.manifest import ImageRecord, collate_images
from captioner.decoding import Rules, sample
from captioner.distributed import SINGLE, World
from captioner.models.captioner import Captioner
from captioner.rewards import CiderD
from captioner.seeds import derived
from captioner.text import tokenize, words_of
from captioner.vocab import Vocab


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


class SelfCritical:
    """The self-critical stage's batches and loss over the training images (cached grids or images); the one
    training loop (captioner.training) takes the steps."""

    def __init__(self, config: Config, model: Captioner, vocab: Vocab, records: list[ImageRecord]):
        self.config, self.model, self.vocab = config, model, vocab
        self.references = [[tokenize(caption) for caption in record.captions] for record in records]
        self.cider = CiderD(self.references)
        self.rules: Rules | None = None
        self.generator: torch.Generator | None = None

    def rewards(self, sequences: list[list[int]], images: list[int]) -> Tensor:
        """CIDEr-D (0-10) of each caption (word ids) against its image's training references."""
        scores = [
            self.cider.score(words_of(self.vocab.decode(words)), self.references[image])
            for words, image in zip(sequences, images, strict=True)
        ]
        return torch.tensor(scores)

    def batches(self, dataset: Dataset, epoch: int, device: torch.device, world: World = SINGLE) -> DataLoader:
        """An epoch's batches of (inputs, image indices), in an order of its own, scst.batch_size images at a
        time over all ranks: each rank takes its share of every batch (a last batch smaller than the ranks
        repeats its images). The sentence rules of the epoch's steps are set here."""
        seed, size = self.config.train.seed, self.config.scst.batch_size
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(derived(seed * 7919 + epoch)))
        order = order.tolist()
        shares = []
        for start in range(0, len(order), size):
            batch = order[start : start + size]
            shares.append([batch[i % len(batch)] for i in range(world.rank, max(len(batch), world.size), world.size)])
        self.epoch, self.world = epoch, world
        self.generator = torch.Generator(device=device)
        _, self.rules = self.model.decoding(self.config.decode)
        return DataLoader(dataset, batch_sampler=shares, collate_fn=collate_images)

    def loss(self, number: int, inputs: Tensor, indices: list[int]) -> tuple[Tensor, dict]:
        """Sample, score and weigh the epoch's batch `number` of images' captions: the policy-gradient loss and its
        statistics. The model is in eval mode (no dropout): the samples and their log-probabilities come from one
        policy. The samples are drawn from a generator seeded by (train.seed, epoch, batch, rank), so that a
        resumed epoch draws them again without a saved state."""
        scst, model, decoder, rules = self.config.scst, self.model, self.model.decoder, self.rules
        seed = self.config.train.seed
        self.generator.manual_seed(
            derived(((seed * 104729 + self.epoch) * 1_000_003 + number) * 8191 + self.world.rank)
        )
        n, B = scst.samples, inputs.size(0)
        memory = model.encoder(inputs)  # with gradients into the backbone only when it is fine-tuned
        repeated = memory.repeat_interleave(n, 0)
        with torch.no_grad():
            attended = decoder.prepare(repeated, class_offset=model.class_offset)
            start = torch.full((B * n,), Vocab.bos_id, dtype=torch.long, device=memory.device)
            drawn = sample(
                lambda tokens, state: decoder.step(tokens, state, attended),
                decoder.init_state(repeated),
                start,
                scst.max_len,
                Vocab.eos_id,
                generator=self.generator,
                rules=rules,
                keep_banned=True,  # the masks the words are scored under below
            )
            images = [index for index in indices for _ in range(n)]
            rewards = self.rewards(drawn.tokens, images).view(B, n)
            greedy = None
            if scst.baseline == "greedy":
                greedy_tokens = decoder.decode(
                    memory.detach(),
                    None,
                    Vocab.bos_id,
                    Vocab.eos_id,
                    1,
                    scst.max_len,
                    rules=rules,
                    class_offset=model.class_offset,
                )
                greedy = self.rewards(greedy_tokens.tokens, list(indices))
            baseline = baselines(rewards, scst.baseline, greedy)
        advantages = (rewards - baseline).view(-1).to(memory.device)
        sequence_inputs, targets = padded(drawn.tokens, memory.device)
        logits, _ = decoder(repeated, sequence_inputs, class_offset=model.class_offset)
        word_log_probs, mask, entropy = sequence_log_probs(logits, targets, drawn.banned)
        loss = scst_loss(word_log_probs, mask, advantages)
        words = mask.sum(1).float() - 1  # the ending is not a word
        return loss, {
            "reward": rewards.mean().item(),
            "reward_std": rewards.std().item() if rewards.numel() > 1 else 0.0,
            "baseline": baseline.mean().item(),
            "advantage_abs": advantages.abs().mean().item(),
            "entropy": (entropy * mask).sum().item() / mask.sum().item(),
            "sample_words": words.mean().item(),
            **({"greedy_reward": greedy.mean().item()} if greedy is not None else {}),
        }
