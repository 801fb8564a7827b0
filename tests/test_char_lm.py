"""The char LM: the NumPy min-char-rnn as an oracle for the torch core, truncated BPTT, sampling, cells, CLI."""

from __future__ import annotations

import json
import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from captioner.cli import main
from captioner.config import LMConfig, LMTrainConfig, load_config
from captioner.config.base import CoreSection
from captioner.errors import ConfigError
from captioner.models.char_lm import CharLM, sample_text
from captioner.models.core import RecurrentCore
from captioner.models.registry import restore
from captioner.neurons import text_properties
from captioner.reference import min_char_rnn as ref
from captioner.tasks.char_lm import fit as train_lm
from captioner.tasks.char_lm import nats_per_char as char_lm_nats
from captioner.training import Progress, Trainer, schedule_factor

V, H, T = 7, 5, 9


def numpy_model(seed: int = 0) -> tuple[ref.Params, list[int], list[int], np.ndarray]:
    rng = np.random.default_rng(seed)
    params = ref.Params.init(V, H, seed, scale=0.5)
    params.bh[:] = rng.standard_normal(H) * 0.1
    params.by[:] = rng.standard_normal(V) * 0.1
    inputs = rng.integers(0, V, T).tolist()
    targets = rng.integers(0, V, T).tolist()
    return params, inputs, targets, rng.standard_normal(H) * 0.3


def torch_twin(params: ref.Params) -> tuple[RecurrentCore, torch.nn.Linear]:
    """The torch RNN core and output layer holding the NumPy model's weights (float64)."""
    core = RecurrentCore(V, H, 1, "rnn").double()
    out = torch.nn.Linear(H, V).double()
    with torch.no_grad():
        core.rnn.weight_ih_l0.copy_(torch.from_numpy(params.Wxh))
        core.rnn.weight_hh_l0.copy_(torch.from_numpy(params.Whh))
        core.rnn.bias_ih_l0.copy_(torch.from_numpy(params.bh))
        core.rnn.bias_hh_l0.zero_()
        out.weight.copy_(torch.from_numpy(params.Why))
        out.bias.copy_(torch.from_numpy(params.by))
    return core, out


def test_numpy_forward_and_gradients_equal_the_torch_core():
    params, inputs, targets, h0 = numpy_model()
    loss, grads, h_last = ref.loss_and_gradients(params, inputs, targets, h0)
    cache = ref.forward(params, inputs, h0)

    core, out = torch_twin(params)
    x = torch.nn.functional.one_hot(torch.tensor([inputs]), V).double()  # (1, T, V)
    outputs, (h_final,) = core(x, (torch.from_numpy(h0).view(1, 1, H),))
    logits = out(outputs)[0]
    torch_loss = torch.nn.functional.cross_entropy(logits, torch.tensor(targets), reduction="sum")
    torch_loss.backward()

    np.testing.assert_allclose(logits.detach().numpy(), np.stack(cache.logits), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(h_final.detach().numpy().ravel(), h_last, rtol=1e-12, atol=1e-12)
    assert torch_loss.item() == pytest.approx(loss, rel=1e-12)
    rnn = core.rnn
    pairs = {
        "Wxh": rnn.weight_ih_l0.grad,
        "Whh": rnn.weight_hh_l0.grad,
        "bh": rnn.bias_ih_l0.grad,
        "Why": out.weight.grad,
        "by": out.bias.grad,
    }
    for name, grad in pairs.items():
        np.testing.assert_allclose(grad.numpy(), grads[name], rtol=1e-10, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(rnn.bias_hh_l0.grad.numpy(), grads["bh"], rtol=1e-10, atol=1e-12)


def test_numpy_gradients_pass_a_numerical_check():
    params, inputs, targets, h0 = numpy_model(1)
    _, grads, _ = ref.loss_and_gradients(params, inputs, targets, h0)
    rng = np.random.default_rng(0)
    eps = 1e-6
    for name in params.names():
        weights = getattr(params, name)
        for _ in range(10):
            index = tuple(int(rng.integers(0, n)) for n in weights.shape)
            saved = weights[index]
            weights[index] = saved + eps
            plus = ref.loss_and_gradients(params, inputs, targets, h0)[0]
            weights[index] = saved - eps
            minus = ref.loss_and_gradients(params, inputs, targets, h0)[0]
            weights[index] = saved
            numeric = (plus - minus) / (2 * eps)
            analytic = grads[name][index]
            assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(numeric) + abs(analytic)), (name, index)


def test_numpy_adagrad_learns_a_repeating_text():
    text = "hello world. " * 20
    chars = sorted(set(text))
    data = [chars.index(c) for c in text]
    params = ref.Params.init(len(chars), 32, seed=0)
    optimizer = ref.Adagrad(params, learning_rate=0.1)
    losses = []
    for step in range(300):
        start = (step * 12) % (len(data) - 13)
        loss, grads, _ = ref.loss_and_gradients(
            params, data[start : start + 12], data[start + 1 : start + 13], np.zeros(32)
        )
        optimizer.step(params, grads)
        losses.append(loss / 12)
    assert losses[0] > 2.0 and np.mean(losses[-20:]) < 0.3


def test_char_lm_with_an_rnn_equals_the_numpy_model():
    """Embedding then W_ih is one-hot through Wxh = W_ih E^T: the whole LM matches the oracle."""
    torch.manual_seed(0)
    model = CharLM(V, 4, CoreSection(cell="rnn", hidden_dim=H)).double()
    rnn = model.core.rnn
    params = ref.Params(
        (rnn.weight_ih_l0 @ model.embedding.weight.T).detach().numpy(),
        rnn.weight_hh_l0.detach().numpy(),
        model.out.weight.detach().numpy(),
        (rnn.bias_ih_l0 + rnn.bias_hh_l0).detach().numpy(),
        model.out.bias.detach().numpy(),
    )
    _, inputs, _, _ = numpy_model()
    cache = ref.forward(params, inputs, np.zeros(H))
    logits, _ = model(torch.tensor([inputs]))
    np.testing.assert_allclose(logits[0].detach().numpy(), np.stack(cache.logits), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_carried_state_over_two_chunks_equals_one_long_sequence(cell):
    model = CharLM(11, 8, CoreSection(cell=cell, hidden_dim=16, num_layers=2)).eval()
    ids = torch.randint(0, 11, (3, 20))
    whole, _ = model.run(ids)
    first, state = model.run(ids[:, :12])
    second, _ = model.run(ids[:, 12:], tuple(s.detach() for s in state))
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole)


def trained_lm(tmp_path, steps: int = 200, amp: str = "none", cell: str = "lstm", log=None, dropout=0.0, **train):
    text = "the cat sat on the mat. 'a quote' (and brackets)\n    indented line\n" * 60
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "corpus.txt").write_text(text)
    config = LMConfig.from_dict(
        {
            "data": {"corpus": str(tmp_path / "corpus.txt"), "max_chars": None},
            "model": {"embed_dim": 8, "hidden_dim": 32, "num_layers": 2, "cell": cell, "dropout": dropout},
            "train": {
                "run_dir": str(tmp_path / "run"),
                "batch_size": 4,
                "seq_len": 32,
                "learning_rate": 0.02,
                "max_minutes": None,
                "max_steps": steps,
                "eval_every_minutes": 0.002,
                "amp": amp,
                **train,
            },
        }
    )
    logs = []
    path = train_lm(config, log=log or logs.append)
    return path, logs, text


def test_training_logs_nats_and_bits_and_learns(tmp_path):
    path, logs, text = trained_lm(tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) >= 2 and rows[-1]["step"] == 200
    assert rows[-1]["val_bits"] == pytest.approx(rows[-1]["val_nats"] / math.log(2))
    assert rows[-1]["val_nats"] < min(0.5, rows[0]["val_nats"])  # a uniform guess is ln 23 = 3.1 nats
    line = r"epoch [\d.]+, step 200: loss [\d.]+, val [\d.]+ nats/char, [\d.]+ bits/char, [\d,]+ chars/s, [\d.]+ min"
    assert re.fullmatch(line, logs[-1]), logs[-1]  # the log line every task writes
    model, config, vocabularies = restore(path)
    assert "".join(vocabularies["vocab"].itos[4:]) == "".join(
        sorted(set(text))
    )  # the character vocabulary travels along


def test_ema_saves_the_moving_average_of_the_weights(tmp_path):
    def weights(name, steps, ema_decay):
        path, _, _ = trained_lm(tmp_path / name, steps=steps, lr_schedule="constant", ema_decay=ema_decay)
        return restore(path)[0].state_dict()

    after_one, after_two = weights("one", 1, None), weights("two", 2, None)
    averaged = weights("ema", 2, 0.25)  # the first update copies the weights, the second moves 3/4 of the way
    for name, value in averaged.items():
        torch.testing.assert_close(value, 0.25 * after_one[name] + 0.75 * after_two[name])
    assert not torch.equal(after_one["out.weight"], after_two["out.weight"])
    rows = [json.loads(line) for line in (tmp_path / "ema" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "val_nats_raw" in rows[-1] and rows[-1]["val_nats_raw"] != rows[-1]["val_nats"]
    with pytest.raises(ConfigError, match="config: train.ema_decay must lie between 0 and 1"):  # the config refuses it
        trained_lm(tmp_path / "bad", steps=1, ema_decay=1.0)


def lr_factor(train: LMTrainConfig, step: int, elapsed: float) -> float:
    """The learning-rate factor the training loop sets after `step` steps and `elapsed` seconds of training."""
    trainer = SimpleNamespace(train=train, progress=Progress(step=step, updates=step, elapsed=elapsed), stages=[])
    return schedule_factor(train.lr_schedule, Trainer.schedule(trainer))


def test_learning_rate_schedules_over_the_wall_time_budget(tmp_path):
    def factors(schedule):
        train = LMTrainConfig(lr_schedule=schedule, max_minutes=10.0)
        return [lr_factor(train, step=0, elapsed=60 * minutes) for minutes in (0, 2.5, 5, 7.5, 10, 12)]

    assert factors("constant") == [1.0] * 6
    assert factors("linear") == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0, 0.0])  # straight to zero, then stays
    cosine = factors("cosine")
    assert cosine[0] == 1.0 and cosine[2] == pytest.approx(0.525) and cosine[4] == cosine[5] == pytest.approx(0.05)
    steps = LMTrainConfig(lr_schedule="linear", max_minutes=None, max_steps=200)
    assert lr_factor(steps, step=50, elapsed=1e6) == pytest.approx(0.75)  # by steps when there is no time budget
    with pytest.raises(ConfigError, match="constant, cosine or linear, not 'step'"):
        factors("step")
    with pytest.raises(ConfigError, match="train.lr_schedule must be 'constant' or 'cosine' or 'linear', got 'step'"):
        trained_lm(tmp_path, lr_schedule="step")
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_fp16_training_scales_the_loss_and_learns(tmp_path):
    with pytest.raises(ConfigError, match="no fp16 LSTM on CPUs"):  # torch's fused CPU LSTM has no fp16 kernel
        trained_lm(tmp_path, amp="fp16")
    _, logs, _ = trained_lm(tmp_path, amp="fp16", cell="gru")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(row["val_nats"]) for row in rows)
    assert rows[-1]["val_nats"] < min(0.5, rows[0]["val_nats"])


def test_sampling_is_seeded_and_cold_sampling_is_greedy(tmp_path):
    path, _, _ = trained_lm(tmp_path, steps=30)
    model, _, vocabularies = restore(path)
    vocab = vocabularies["vocab"]
    a = sample_text(model, vocab, "the ", 1, 80, temperature=1.0, seed=3)[0]
    b = sample_text(model, vocab, "the ", 1, 80, temperature=1.0, seed=3)[0]
    c = sample_text(model, vocab, "the ", 1, 80, temperature=1.0, seed=4)[0]
    assert a == b and a != c
    greedy = sample_text(model, vocab, "the ", 1, 80, temperature=0.0)[0]
    assert sample_text(model, vocab, "the ", 1, 80, temperature=1e-4, seed=5)[0] == greedy
    top1 = sample_text(model, vocab, "the ", 1, 80, temperature=1.0, top_k=1, seed=6)[0]
    assert top1 == greedy
    streams = sample_text(model, vocab, "the ", 3, 80, temperature=1.0, seed=3)  # three streams at once
    assert len(streams) == 3 and len(set(streams)) == 3


def test_text_properties_by_hand():
    props = text_properties('a("b")\n  c\n')
    assert props["inside quotes"].tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    assert props["inside brackets"].tolist() == [0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    assert props["position in line"].tolist() == [0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3]
    assert props["indentation depth"].tolist() == [0, 0, 0, 0, 0, 0, 0, 1, 2, 2, 2]


def test_lm_cli_sample_cells_and_mistakes(tmp_path, capsys):
    path, _, text = trained_lm(tmp_path, steps=30)
    args = ["lm", "sample", "--checkpoint", str(path), "--prime", "the", "--length", "40", "--seed", "1"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first and first.startswith("the")
    (tmp_path / "probe.txt").write_text(text[:2000])
    page = tmp_path / "cells.html"
    assert (
        main(["lm", "cells", "--checkpoint", str(path), "--text", str(tmp_path / "probe.txt"), "--html", str(page)])
        == 0
    )
    out = capsys.readouterr().out
    assert "| inside quotes |" in out and "| indentation depth |" in out
    assert page.read_text().count("<span") == 2000
    assert main(["lm", "cells", "--checkpoint", str(path), "--text", str(tmp_path / "absent.txt")]) == 2
    assert "absent.txt does not exist" in capsys.readouterr().err
    (tmp_path / "not_lm.pt").write_bytes(b"PK\x03\x04 nonsense")
    assert main(["lm", "sample", "--checkpoint", str(tmp_path / "not_lm.pt")]) == 2
    assert "not_lm.pt" in capsys.readouterr().err


def test_validation_says_how_many_characters_it_scored():
    model = CharLM(5, 4, CoreSection(hidden_dim=8))
    ids = torch.randint(0, 5, (1000,))
    nats, scored = char_lm_nats(model, ids, torch.device("cpu"), seq_len=16, batch_size=16)
    # 16 streams of 62 characters: the first of each is context only, the last 8 characters fit no stream
    assert scored == 16 * 61 and math.isfinite(nats)


class StopRunError(Exception):
    pass


@pytest.mark.parametrize("ema_decay", [None, 0.9])
def test_an_interrupted_run_resumes_to_the_uninterrupted_weights(tmp_path, ema_decay):
    """Stopped after a validation and resumed with --resume, a run with dropout (and a weight average) ends
    with the weights of a run never stopped: weights, optimizer, generator, stream position and carried
    state all come back. 100 steps are more than one pass over the streams (a zero state mid-run)."""
    every_step = 1e-9  # minutes: a validation after every step (0 is refused: it would mean never)
    recipe = dict(steps=100, dropout=0.3, lr_schedule="linear", eval_every_minutes=every_step, ema_decay=ema_decay)
    whole, _, _ = trained_lm(tmp_path / "whole", **recipe)

    def stop_at_step_37(line):
        if ", step 37:" in line:
            raise StopRunError

    with pytest.raises(StopRunError):
        trained_lm(tmp_path / "parts", log=stop_at_step_37, **recipe)
    config = load_config(tmp_path / "parts" / "run" / "config.yaml", schema=LMConfig)
    logs = []
    resumed = train_lm(config, resume=True, log=logs.append)
    # 29 steps per pass over the streams: step 36 is the 7th of the second pass
    assert f"resuming {tmp_path / 'parts' / 'run' / 'last.pt'} at epoch 2, step 36" in logs
    for name, value in restore(whole)[0].state_dict().items():
        assert torch.equal(value, restore(resumed)[0].state_dict()[name]), name
    rows = [json.loads(line) for line in (tmp_path / "parts" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(1, 100)) + [100]  # no row of the lost step 37 twice
