"""PathPredictor: a ball's next positions from its first ones, on the package's RecurrentCore.

The core reads the observed path as (position, displacement) pairs, normalised by the training data's
statistics (buffers, so they travel in checkpoints); then it rolls out: each step its output layer gives
how the displacement changes, the new displacement moves the last position, and both are fed back. The
model works on displacements, not positions: a zero output is "keep going as before" (constant velocity),
and gravity, drag and a bounce are changes of displacement it has to learn.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from captioner.config.base import CoreSection
from captioner.models.core import RecurrentCore
from captioner.models.linear import Linear


class PathPredictor(nn.Module):
    def __init__(self, core: CoreSection | None = None):
        super().__init__()
        core = core or CoreSection()
        self.core = RecurrentCore.of(core, 4)  # each step reads (position, displacement)
        self.head = Linear(core.hidden_dim, 2)
        nn.init.zeros_(self.head.weight)  # start from "the same displacement again" (its bias: the mean)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("position_mean", torch.zeros(2))
        self.register_buffer("position_std", torch.ones(2))
        self.register_buffer("step_std", torch.ones(2))

    def set_statistics(self, paths: Tensor) -> None:
        """Normalise inputs by the mean and spread of positions and of one step's displacement in `paths`."""
        with torch.no_grad():
            self.position_mean.copy_(paths.mean(dim=(0, 1)))
            self.position_std.copy_(paths.std(dim=(0, 1)).clamp_min(1e-6))
            self.step_std.copy_(paths.diff(dim=1).std(dim=(0, 1)).clamp_min(1e-6))

    def _inputs(self, positions: Tensor, steps: Tensor) -> Tensor:
        return torch.cat([(positions - self.position_mean) / self.position_std, steps / self.step_std], dim=-1)

    def forward(self, observed: Tensor, horizon: int) -> Tensor:
        """observed (B, T, 2) positions, T >= 2 -> the next `horizon` positions (B, horizon, 2)."""
        steps = observed.diff(dim=1)  # (B, T - 1, 2)
        out, state = self.core(self._inputs(observed[:, 1:], steps))
        hidden, position, step = out[:, -1], observed[:, -1], steps[:, -1]
        predicted = []
        for t in range(horizon):
            step = step + self.head(hidden) * self.step_std  # the change of displacement, in metres
            position = position + step
            predicted.append(position)
            if t + 1 < horizon:
                hidden, state = self.core.step(self._inputs(position, step), state)
        return torch.stack(predicted, dim=1)
