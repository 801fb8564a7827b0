"""RecurrentCore: the one recurrent engine (LSTM, GRU or tanh RNN) behind every model in the package.

It wraps torch's fused nn.LSTM / nn.GRU / nn.RNN (cuDNN on GPU) for whole sequences, and offers a
single-step call written out over the very same weight tensors, so a step loop reproduces the fused
call. State tensors are batch-first everywhere: (B, L, H) for L layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captioner.config.base import CoreSection
from captioner.models.linear import linear

State = tuple[Tensor, ...]  # (h,) or (h, c), each (B, L, H)


class Cell:
    """What RecurrentCore needs of one kind of cell: torch's fused module, its gates, its state and one step.

    The gate layout is torch's, so the step written out here and the fused module share their weights.
    """

    rnn_class: type[nn.RNNBase]
    num_gates: int  # G: the input and hidden projections are (B, G * H)
    num_states: int = 1  # state tensors carried: h, and c for an LSTM

    def update(self, input_gates: Tensor, hidden_gates: Tensor, state: State) -> State:
        """One step of one layer: projected input (B, G * H), projected h_{t-1} (B, G * H) and the layer's
        state ((B, H) each) -> its new state, h_t first."""
        raise NotImplementedError

    def init(self, rnn: nn.RNNBase, hidden_dim: int) -> None:
        """Adjust torch's uniform initialisation of the fused module's weights; none by default."""


class LSTMCell(Cell):
    rnn_class, num_gates, num_states = nn.LSTM, 4, 2

    def update(self, input_gates: Tensor, hidden_gates: Tensor, state: State) -> State:
        i, f, g, o = (input_gates + hidden_gates).chunk(4, dim=1)
        c = torch.sigmoid(f) * state[1] + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def init(self, rnn: nn.RNNBase, hidden_dim: int) -> None:
        """Forget-gate bias 1, so memory is kept early on."""
        H = hidden_dim
        with torch.no_grad():
            for name, param in rnn.named_parameters():
                if name.startswith("bias_ih"):
                    param[H : 2 * H].fill_(1.0)  # gate order i, f, g, o
                elif name.startswith("bias_hh"):
                    param[H : 2 * H].fill_(0.0)


class GRUCell(Cell):
    rnn_class, num_gates = nn.GRU, 3

    def update(self, input_gates: Tensor, hidden_gates: Tensor, state: State) -> State:
        x_r, x_z, x_n = input_gates.chunk(3, dim=1)
        h_r, h_z, h_n = hidden_gates.chunk(3, dim=1)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)  # the reset gate scales the hidden projection, bias included (torch's GRU)
        return ((1 - z) * n + z * state[0],)


class TanhCell(Cell):
    rnn_class, num_gates = nn.RNN, 1

    def update(self, input_gates: Tensor, hidden_gates: Tensor, state: State) -> State:
        return (torch.tanh(input_gates + hidden_gates),)


# The cells by the name a config gives; a new cell is one more entry here.
CELLS: dict[str, Cell] = {"lstm": LSTMCell(), "gru": GRUCell(), "rnn": TanhCell()}


class RecurrentCore(nn.Module):
    """Stacked LSTM / GRU / tanh RNN with dropout between layers; fused and single-step calls share weights."""

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        num_layers: int = 1,
        cell: str = "lstm",
        dropout: float = 0.0,
        bidirectional: bool = False,
    ):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"unknown recurrent cell {cell!r}; choose one of {', '.join(CELLS)}")
        self.unit = CELLS[cell]  # the cell's gates, state and step
        self.num_gates, self.num_states = self.unit.num_gates, self.unit.num_states
        self.cell, self.input_dim, self.hidden_dim = cell, input_dim, hidden_dim
        self.num_layers, self.dropout, self.bidirectional = num_layers, dropout, bidirectional
        self.rnn = self.unit.rnn_class(
            input_dim,
            hidden_dim,
            num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
            bidirectional=bidirectional,
        )
        self.reset_parameters()

    @classmethod
    def of(cls, section: CoreSection, input_dim: int, bidirectional: bool = False) -> RecurrentCore:
        """The core a model section describes (its cell, hidden_dim, num_layers, dropout) over inputs of input_dim."""
        return cls(input_dim, section.hidden_dim, section.num_layers, section.cell, section.dropout, bidirectional)

    def reset_parameters(self) -> None:
        """Uniform init as torch does, then the cell's own adjustment (the LSTM's forget-gate bias 1)."""
        self.rnn.reset_parameters()
        self.unit.init(self.rnn, self.hidden_dim)

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def initial_state(self, batch_size: int, device=None, dtype=None) -> State:
        """Zero state: (h,) or (h, c), each (B, L * directions, H)."""
        shape = (batch_size, self.num_layers * self.num_directions, self.hidden_dim)
        return tuple(torch.zeros(shape, device=device, dtype=dtype) for _ in range(self.num_states))

    def forward(self, x: Tensor, state: State | None = None, lengths: Tensor | None = None) -> tuple[Tensor, State]:
        """Fused call over a whole sequence.

        x: (B, T, input_dim); lengths: (B,) true lengths of padded rows (their padded outputs are zero and
        their final state is taken at their last real step). Returns outputs (B, T, H * directions) and
        the final state.
        """
        torch_state = None
        if state is not None:
            torch_state = tuple(s.transpose(0, 1).contiguous() for s in state)  # (L, B, H) for torch
            if len(torch_state) == 1:  # torch takes a lone state tensor bare, several as a tuple
                torch_state = torch_state[0]
        if lengths is not None:
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            packed_out, final = self.rnn(packed, torch_state)
            outputs, _ = nn.utils.rnn.pad_packed_sequence(packed_out, batch_first=True, total_length=x.size(1))
        else:
            outputs, final = self.rnn(x, torch_state)
        final = final if isinstance(final, tuple) else (final,)
        return outputs, tuple(s.transpose(0, 1) for s in final)  # back to (B, L, H)

    def _weights(self, layer: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        rnn = self.rnn
        return (
            getattr(rnn, f"weight_ih_l{layer}"),
            getattr(rnn, f"weight_hh_l{layer}"),
            getattr(rnn, f"bias_ih_l{layer}"),
            getattr(rnn, f"bias_hh_l{layer}"),
        )

    def input_weight(self, start: int = 0, stop: int | None = None) -> Tensor:
        """Columns start:stop of the layer-0 input weight W_ih: (G * H, stop - start), a view."""
        return self._weights(0)[0][:, start:stop]

    def project_input(
        self, x: Tensor, start: int = 0, stop: int | None = None, bias: bool = True, weight: Tensor | None = None
    ) -> Tensor:
        """Layer-0 input projection x @ W_ih[:, start:stop]^T (+ b_ih): (..., stop - start) -> (..., G * H);
        weight: those columns already taken out (split_input_weight).

        The projection of an input that is a concatenation is the sum of the projections of its parts,
        so a caller can project the part known for all steps at once, outside its step loop.
        """
        bias_ih = self._weights(0)[2] if bias else None
        return linear(x, self.input_weight(start, stop) if weight is None else weight, bias_ih)

    def split_input_weight(self, at: int) -> tuple[Tensor, Tensor]:
        """The layer-0 input weight's columns :at and at: as two contiguous matrices, copied once for a caller that
        reads them many times (a step loop); their gradients go back as one (G * H, I) matrix rather than as
        two zero-padded ones summed."""
        weight = self._weights(0)[0]
        if torch.compiler.is_exporting() or not (torch.is_grad_enabled() and weight.requires_grad):
            return weight[:, :at].contiguous(), weight[:, at:].contiguous()
        return _SplitColumns.apply(weight, at)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """One time step: x (B, input_dim) -> top-layer output (B, H) and the new state."""
        return self.step_projected(self.project_input(x), state)

    def step_projected(self, input_gates: Tensor, state: State) -> tuple[Tensor, State]:
        """One time step from the already projected layer-0 input (B, G * H), see project_input."""
        if self.bidirectional:
            raise RuntimeError("a bidirectional core has no single-step call")
        layers: list[State] = []  # each layer's new state, (B, H) each
        for layer in range(self.num_layers):
            weight_ih, weight_hh, bias_ih, bias_hh = self._weights(layer)
            if layer > 0:
                below = F.dropout(layers[-1][0], self.dropout, self.training)
                input_gates = linear(below, weight_ih, bias_ih, few_shapes=True)  # a step's rows
            hidden_gates = linear(state[0][:, layer], weight_hh, bias_hh, few_shapes=True)  # (B, G * H)
            layers.append(self.unit.update(input_gates, hidden_gates, tuple(s[:, layer] for s in state)))
        return layers[-1][0], tuple(torch.stack(parts, dim=1) for parts in zip(*layers, strict=True))  # (B, L, H)


class _SplitColumns(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: Tensor, at: int) -> tuple[Tensor, Tensor]:
        return weight[:, :at].contiguous(), weight[:, at:].contiguous()

    @staticmethod
    def backward(ctx, left: Tensor, right: Tensor):
        return torch.cat([left, right], dim=1), None
