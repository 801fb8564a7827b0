"""A character-level vanilla RNN in NumPy, written out by hand: the model of the lectures' min-char-rnn.

    h_t = tanh(Wxh x_t + Whh h_{t-1} + bh)      x_t: one-hot of character t
    y_t = Why h_t + by                          p_t = softmax(y_t), loss = -sum_t log p_t[target_t]

Forward, backpropagation through time and Adagrad in plain NumPy (float64), small enough to read in
one sitting. The tests use it as an oracle for the torch RNN core (same weights, same outputs, same
gradients) and check its own gradients numerically. `python -m captioner.reference.min_char_rnn FILE`
trains it on a text file and prints samples as it goes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Params:
    Wxh: np.ndarray  # (H, V)
    Whh: np.ndarray  # (H, H)
    Why: np.ndarray  # (V, H)
    bh: np.ndarray  # (H,)
    by: np.ndarray  # (V,)

    @classmethod
    def init(cls, vocab_size: int, hidden_size: int, seed: int = 0, scale: float = 0.01) -> Params:
        rng = np.random.default_rng(seed)
        return cls(
            rng.standard_normal((hidden_size, vocab_size)) * scale,
            rng.standard_normal((hidden_size, hidden_size)) * scale,
            rng.standard_normal((vocab_size, hidden_size)) * scale,
            np.zeros(hidden_size),
            np.zeros(vocab_size),
        )

    def names(self) -> list[str]:
        return ["Wxh", "Whh", "Why", "bh", "by"]


@dataclass
class Forward:
    """What the backward pass needs from the forward pass."""

    inputs: list[int]
    hs: list[np.ndarray] = field(default_factory=list)  # h_0 (given) .. h_T
    probs: list[np.ndarray] = field(default_factory=list)  # p_1 .. p_T
    logits: list[np.ndarray] = field(default_factory=list)


def forward(params: Params, inputs: list[int], h0: np.ndarray) -> Forward:
    cache = Forward(inputs, hs=[h0])
    for t, char in enumerate(inputs):
        h = np.tanh(params.Wxh[:, char] + params.Whh @ cache.hs[t] + params.bh)  # Wxh @ one_hot = a column
        y = params.Why @ h + params.by
        p = np.exp(y - y.max())
        cache.hs.append(h)
        cache.logits.append(y)
        cache.probs.append(p / p.sum())
    return cache


def loss_and_gradients(
    params: Params, inputs: list[int], targets: list[int], h0: np.ndarray
) -> tuple[float, dict[str, np.ndarray], np.ndarray]:
    """Summed cross-entropy over the sequence, the gradient of every parameter, and the last hidden state."""
    cache = forward(params, inputs, h0)
    loss = -sum(np.log(cache.probs[t][targets[t]]) for t in range(len(inputs)))
    grads = {name: np.zeros_like(getattr(params, name)) for name in params.names()}
    dh_next = np.zeros_like(h0)
    for t in reversed(range(len(inputs))):
        dy = cache.probs[t].copy()
        dy[targets[t]] -= 1  # d loss / d y_t for softmax + cross-entropy
        grads["Why"] += np.outer(dy, cache.hs[t + 1])
        grads["by"] += dy
        dh = params.Why.T @ dy + dh_next  # from the output and from step t + 1
        dpre = (1 - cache.hs[t + 1] ** 2) * dh  # through tanh
        grads["bh"] += dpre
        grads["Wxh"][:, inputs[t]] += dpre
        grads["Whh"] += np.outer(dpre, cache.hs[t])
        dh_next = params.Whh.T @ dpre
    return float(loss), grads, cache.hs[-1]


class Adagrad:
    """param -= lr * g / sqrt(sum of g^2 so far + eps), per element."""

    def __init__(self, params: Params, learning_rate: float = 0.1, eps: float = 1e-8):
        self.lr, self.eps = learning_rate, eps
        self.memory = {name: np.zeros_like(getattr(params, name)) for name in params.names()}

    def step(self, params: Params, grads: dict[str, np.ndarray], clip: float = 5.0) -> None:
        for name, grad in grads.items():
            grad = np.clip(grad, -clip, clip)  # element-wise clipping, as in the lectures
            self.memory[name] += grad * grad
            getattr(params, name)[...] -= self.lr * grad / np.sqrt(self.memory[name] + self.eps)


def sample(params: Params, h: np.ndarray, seed_char: int, length: int, rng: np.random.Generator) -> list[int]:
    chars, char = [], seed_char
    for _ in range(length):
        h = np.tanh(params.Wxh[:, char] + params.Whh @ h + params.bh)
        y = params.Why @ h + params.by
        p = np.exp(y - y.max())
        char = int(rng.choice(len(p), p=p / p.sum()))
        chars.append(char)
    return chars


def train(text: str, hidden_size: int = 100, seq_length: int = 25, steps: int = 20_000, lr: float = 0.1) -> Params:
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    data = [index[c] for c in text]
    params, optimizer = Params.init(len(chars), hidden_size), None
    optimizer = Adagrad(params, lr)
    rng = np.random.default_rng(0)
    smooth_loss = np.log(len(chars)) * seq_length
    h, position = np.zeros(hidden_size), 0
    for step in range(steps):
        if position + seq_length + 1 > len(data):
            h, position = np.zeros(hidden_size), 0
        inputs, targets = data[position : position + seq_length], data[position + 1 : position + seq_length + 1]
        loss, grads, h = loss_and_gradients(params, inputs, targets, h)
        optimizer.step(params, grads)
        smooth_loss = 0.999 * smooth_loss + 0.001 * loss
        if step % 1000 == 0:
            text_out = "".join(chars[i] for i in sample(params, h, inputs[0], 200, rng))
            print(f"step {step}, loss {smooth_loss / seq_length:.3f} nats/char\n{text_out}\n----")
        position += seq_length
    return params


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as file:
        train(file.read())
