"""RecurrentCore: the step loop reproduces the fused call, for every cell type and depth."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captioner.models.core import CELLS, Cell, RecurrentCore
from captioner.models.decoder import AttentionDecoder


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_step_loop_equals_fused_call(cell, num_layers):
    core = RecurrentCore(5, 7, num_layers, cell, dropout=0.3).eval()
    x = torch.randn(3, 6, 5)
    state = core.initial_state(3)
    state = tuple(torch.randn_like(s) for s in state)  # a non-zero start state exercises every term
    fused_out, fused_state = core(x, state)
    outputs, step_state = [], state
    for t in range(x.size(1)):
        out, step_state = core.step(x[:, t], step_state)
        outputs.append(out)
    torch.testing.assert_close(torch.stack(outputs, 1), fused_out[:, :, :7], rtol=1e-5, atol=1e-6)
    for a, b in zip(step_state, fused_state, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_split_input_projection_equals_whole():
    core = RecurrentCore(8, 4, 1, "lstm")
    x = torch.randn(2, 8)
    whole = core.project_input(x)
    parts = core.project_input(x[:, :3], stop=3) + core.project_input(x[:, 3:], start=3, bias=False)
    torch.testing.assert_close(parts, whole)


def test_forget_gate_bias_is_positive():
    core = RecurrentCore(4, 6, 2, "lstm")
    for layer in range(2):
        total = getattr(core.rnn, f"bias_ih_l{layer}") + getattr(core.rnn, f"bias_hh_l{layer}")
        assert torch.all(total[6:12] == 1.0)


def test_lengths_take_last_real_state():
    core = RecurrentCore(3, 4, 1, "gru").eval()
    x = torch.randn(2, 5, 3)
    _, state = core(x, lengths=torch.tensor([5, 2]))
    _, short_state = core(x[1:, :2])
    torch.testing.assert_close(state[0][1], short_state[0][0])


def test_unknown_cell_is_named():
    with pytest.raises(ValueError, match="'transformer'"):
        RecurrentCore(3, 4, cell="transformer")


class ReLURNN(nn.RNN):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, nonlinearity="relu", **kwargs)


class ReLUCell(Cell):
    rnn_class, num_gates = ReLURNN, 1

    def update(self, input_gates, hidden_gates, state):
        return (torch.relu(input_gates + hidden_gates),)


def test_a_new_cell_is_one_registry_entry(monkeypatch):
    monkeypatch.setitem(CELLS, "relu", ReLUCell())
    core = RecurrentCore(5, 7, 2, "relu").eval()
    x = torch.randn(3, 4, 5)
    fused_out, fused_state = core(x)
    state, outputs = core.initial_state(3), []
    for t in range(x.size(1)):
        out, state = core.step(x[:, t], state)
        outputs.append(out)
    torch.testing.assert_close(torch.stack(outputs, 1), fused_out)
    torch.testing.assert_close(state[0], fused_state[0])
    decoder = AttentionDecoder(20, 6, 4, 7, 5, cell="relu")
    logits, _ = decoder(torch.randn(2, 3, 6), torch.randint(1, 20, (2, 4)))
    assert logits.shape == (2, 4, 20) and decoder.init_c is None
    with pytest.raises(ValueError, match="lstm, gru, rnn, relu"):
        RecurrentCore(3, 4, cell="transformer")
