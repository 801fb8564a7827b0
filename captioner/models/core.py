"""RecurrentCore: the one recurrent engine (LSTM, GRU or tanh RNN) behind every model in the package.

It wraps torch's fused nn.LSTM / nn.GRU / nn.RNN (cuDNN on GPU) for whole sequences, and offers a
single-step call written out over the very same weight tensors, so a step loop reproduces the fused
call. State tensors are batch-first everywhere: (B, L, H) for L layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CELLS = {"lstm": (nn.LSTM, 4), "gru": (nn.GRU, 3), "rnn": (nn.RNN, 1)}

State = tuple[Tensor, ...]  # (h,) or (h, c), each (B, L, H)


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
        rnn_class, self.num_gates = CELLS[cell]
        self.cell, self.input_dim, self.hidden_dim = cell, input_dim, hidden_dim
        self.num_layers, self.dropout, self.bidirectional = num_layers, dropout, bidirectional
        self.rnn = rnn_class(
            input_dim,
            hidden_dim,
            num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
            bidirectional=bidirectional,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform init as torch does, with the LSTM forget-gate bias set to 1 so memory is kept early on."""
        self.rnn.reset_parameters()
        if self.cell == "lstm":
            H = self.hidden_dim
            with torch.no_grad():
                for name, param in self.rnn.named_parameters():
                    if name.startswith("bias_ih"):
                        param[H : 2 * H].fill_(1.0)  # gate order i, f, g, o
                    elif name.startswith("bias_hh"):
                        param[H : 2 * H].fill_(0.0)

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def initial_state(self, batch_size: int, device=None, dtype=None) -> State:
        """Zero state: (h,) or (h, c), each (B, L * directions, H)."""
        shape = (batch_size, self.num_layers * self.num_directions, self.hidden_dim)
        h = torch.zeros(shape, device=device, dtype=dtype)
        return (h, torch.zeros_like(h)) if self.cell == "lstm" else (h,)

    def forward(self, x: Tensor, state: State | None = None, lengths: Tensor | None = None) -> tuple[Tensor, State]:
        """Fused call over a whole sequence.

        x: (B, T, input_dim); lengths: (B,) true lengths of padded rows (their padded outputs are zero and
        their final state is taken at their last real step). Returns outputs (B, T, H * directions) and
        the final state.
        """
        torch_state = None
        if state is not None:
            torch_state = tuple(s.transpose(0, 1).contiguous() for s in state)  # (L, B, H) for torch
            if self.cell != "lstm":
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

    def project_input(self, x: Tensor, start: int = 0, stop: int | None = None, bias: bool = True) -> Tensor:
        """Layer-0 input projection x @ W_ih[:, start:stop]^T (+ b_ih): (..., stop - start) -> (..., G * H).

        The projection of an input that is a concatenation is the sum of the projections of its parts,
        so a caller can project the part known for all steps at once, outside its step loop.
        """
        bias_ih = self._weights(0)[2] if bias else None
        return F.linear(x, self.input_weight(start, stop), bias_ih)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """One time step: x (B, input_dim) -> top-layer output (B, H) and the new state."""
        return self.step_projected(self.project_input(x), state)

    def step_projected(self, input_gates: Tensor, state: State) -> tuple[Tensor, State]:
        """One time step from the already projected layer-0 input (B, G * H), see project_input."""
        if self.bidirectional:
            raise RuntimeError("a bidirectional core has no single-step call")
        h_all = state[0]
        c_all = state[1] if self.cell == "lstm" else None
        new_h, new_c = [], []
        for layer in range(self.num_layers):
            weight_ih, weight_hh, bias_ih, bias_hh = self._weights(layer)
            if layer > 0:
                below = F.dropout(new_h[-1], self.dropout, self.training)
                input_gates = F.linear(below, weight_ih, bias_ih)
            hidden_gates = F.linear(h_all[:, layer], weight_hh, bias_hh)  # (B, G * H)
            if self.cell == "lstm":
                i, f, g, o = (input_gates + hidden_gates).chunk(4, dim=1)
                c = torch.sigmoid(f) * c_all[:, layer] + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                new_c.append(c)
            elif self.cell == "gru":
                x_r, x_z, x_n = input_gates.chunk(3, dim=1)
                h_r, h_z, h_n = hidden_gates.chunk(3, dim=1)
                r = torch.sigmoid(x_r + h_r)
                z = torch.sigmoid(x_z + h_z)
                n = torch.tanh(x_n + r * h_n)
                h = (1 - z) * n + z * h_all[:, layer]
            else:
                h = torch.tanh(input_gates + hidden_gates)
            new_h.append(h)
        h_state = torch.stack(new_h, dim=1)  # (B, L, H)
        if self.cell == "lstm":
            return new_h[-1], (h_state, torch.stack(new_c, dim=1))
        return new_h[-1], (h_state,)
