"""Decoding: greedy == beam 1, batched beam == one input at a time, sampling determinism."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from captioner.config import DecodeConfig
from captioner.decoding import Norm, Rules, beam_search, greedy, sample
from captioner.models.decoder import AttendedMemory, AttentionDecoder

V, EOS, BOS = 12, 2, 1


def make_decoder(cell="lstm", visual_words=False):  # visual_words: two groups of visual words
    torch.manual_seed(1)
    decoder = AttentionDecoder(
        V,
        memory_dim=6,
        embed_dim=5,
        hidden_dim=8,
        attention_dim=7,
        cell=cell,
        dropout=0.0,
        visual_word_groups=2 if visual_words else 0,
    ).eval()
    if visual_words:
        decoder.set_visual_words([[5, 6, 7], [8, 9]])
    return decoder


def step_function(decoder, memory):
    """The decoder's step over one memory, as decoding.py wants it."""
    attended = decoder.prepare(memory)
    return lambda tokens, state: decoder.step(tokens, state, attended)


def decode(decoder, memory, beam_size, max_len=9, alpha=0.0, rules=None, n_best=1):
    return decoder.decode(memory, None, BOS, EOS, beam_size, max_len, Norm("gnmt", alpha), rules, n_best)


def test_beam_one_equals_greedy():
    decoder, memory = make_decoder(), torch.randn(4, 5, 6)
    g = decode(decoder, memory, 1)
    attended, state = decoder.prepare(memory), decoder.init_state(memory)
    b = beam_search(lambda t, s: decoder.step(t, s, attended), state, torch.full((4,), BOS), 1, 9, EOS)
    assert b.tokens == g.tokens
    torch.testing.assert_close(b.scores, g.scores)
    for x, y in zip(b.traces, g.traces, strict=True):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize(("cell", "visual_words"), [("gru", False), ("lstm", True)])
def test_batched_beam_equals_one_at_a_time(cell, visual_words, monkeypatch):
    decoder, memory = make_decoder(cell, visual_words), torch.randn(5, 4, 6)
    narrowed, narrow = [], AttendedMemory.narrow
    monkeypatch.setattr(AttendedMemory, "narrow", lambda self, keep: narrowed.append(keep) or narrow(self, keep))
    batched = decode(decoder, memory, 4, alpha=0.7)
    assert narrowed  # pictures that were done left the batch before the others
    for i in range(memory.size(0)):
        single = decode(decoder, memory[i : i + 1], 4, alpha=0.7)
        assert single.tokens[0] == batched.tokens[i]
        torch.testing.assert_close(single.scores[0], batched.scores[i], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(single.traces[0], batched.traces[i], rtol=1e-5, atol=1e-6)


def test_beam_score_is_the_sequence_log_probability():
    """Re-scoring the returned caption with teacher forcing gives the score and the attention maps beam
    search reported."""
    decoder, memory = make_decoder(), torch.randn(3, 5, 6)
    result = decode(decoder, memory, 3, max_len=20)
    for i, tokens in enumerate(result.tokens):
        ids = torch.tensor([[BOS, *tokens, EOS]])
        logits, alphas = decoder(memory[i : i + 1], ids[:, :-1])
        torch.testing.assert_close(result.traces[i], alphas[0, : len(tokens)], rtol=1e-5, atol=1e-6)
        log_probs = torch.log_softmax(logits, -1)[0].gather(1, ids[0, 1:, None]).sum()
        torch.testing.assert_close(result.scores[i], log_probs, rtol=1e-4, atol=1e-4)  # the ending paid for


def test_beam_never_worse_than_greedy():
    decoder, memory = make_decoder(), torch.randn(6, 5, 6)
    g = decode(decoder, memory, 1, max_len=25)
    b = decode(decoder, memory, 5, max_len=25)
    assert torch.all(b.scores >= g.scores - 1e-5)


def test_sampling_is_deterministic_with_a_seed_and_greedy_near_zero_temperature():
    decoder, memory = make_decoder(), torch.randn(3, 5, 6)
    step = step_function(decoder, memory)
    start = torch.full((3,), BOS)
    runs = [
        sample(step, decoder.init_state(memory), start, 10, EOS, 1.0, 5, torch.Generator().manual_seed(7))
        for _ in range(2)
    ]
    assert runs[0].tokens == runs[1].tokens
    cold = sample(step, decoder.init_state(memory), start, 10, EOS, 1e-4, None, torch.Generator().manual_seed(3))
    assert cold.tokens == greedy(step, decoder.init_state(memory), start, 10, EOS).tokens


def test_top_k_one_is_greedy():
    decoder, memory = make_decoder(), torch.randn(3, 5, 6)
    step = step_function(decoder, memory)
    start = torch.full((3,), BOS)
    top1 = sample(step, decoder.init_state(memory), start, 10, EOS, 2.0, 1, torch.Generator().manual_seed(0))
    assert top1.tokens == greedy(step, decoder.init_state(memory), start, 10, EOS).tokens


# ---------------------------------------------------------------- beam search against exhaustive search


class TableModel:
    """A tiny language model: the next token's log-probabilities depend on the last two tokens, from a
    random table; the state is the (N, 2) last two tokens, and so is the trace of each step (what a
    caption's traces must then be is known). Small enough to search exhaustively."""

    def __init__(self, vocab_size: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.logits = torch.randn(vocab_size, vocab_size, vocab_size, generator=generator) * 2.0
        self.logits[:, :, BOS] = float("-inf")  # BOS is never generated
        self.vocab_size = vocab_size

    def step(self, tokens, state):
        state = torch.stack([state[:, 1], tokens], dim=1)
        return self.logits[state[:, 0], state[:, 1]], state, state.float()

    def start(self, n: int):
        return torch.full((n, 2), BOS)

    def log_prob(self, words: list[int]) -> float:
        """log P(words, then EOS)."""
        context, total = [BOS, BOS], 0.0
        for token in [*words, EOS]:
            total += torch.log_softmax(self.logits[context[0], context[1]], -1)[token].item()
            context = [context[1], token]
        return total


def allowed(words: list[int], rules: Rules, max_len: int) -> bool:
    """Whether a finished sequence obeys the rules (checked directly, not through Rules.banned)."""
    if not 1 <= len(words) <= max_len or len(words) < rules.min_len:
        return False
    if rules.can_end is not None and not rules.can_end[words[-1]]:
        return False
    if rules.apart is not None and any(rules.apart[a] and rules.apart[b] for a, b in itertools.pairwise(words)):
        return False
    if rules.same is not None:  # the repeat rules compare what the tokens count as
        words = rules.same[torch.tensor(words)].tolist()
    if rules.no_repeat_word and any(a == b for a, b in itertools.pairwise(words)):
        return False
    n = rules.no_repeat_ngram
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)] if n > 1 else []
    return len(grams) == len(set(grams))


def exhaustive(model: TableModel, norm: Norm, rules: Rules, max_len: int) -> tuple[list[int], float]:
    """The best sequence of up to max_len words (no BOS or EOS among them) under norm, by brute force."""
    words = [w for w in range(model.vocab_size) if w not in (BOS, EOS)]
    best, best_score = None, float("-inf")
    for length in range(1, max_len + 1):
        for sequence in itertools.product(words, repeat=length):
            if not allowed(list(sequence), rules, max_len):
                continue
            score = model.log_prob(list(sequence)) / norm.penalty(length + 1).item()
            if score > best_score:
                best, best_score = list(sequence), score
    return best, best_score


NORMS = [Norm(), Norm("gnmt", 0.7), Norm("gnmt", 2.0), Norm("mean"), Norm("gnmt", -0.5)]


@pytest.mark.parametrize("norm", NORMS, ids=lambda n: f"{n.kind}-{n.alpha}")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_beam_wide_enough_finds_the_exhaustive_best(norm, seed):
    """With a beam as wide as every prefix, beam search must return exactly the best sequence under the
    length normalisation, over every sequence up to the length limit: what it keeps, drops, ends and
    stops on is then all that can go wrong."""
    V, max_len = 6, 4  # 4 words besides PAD... : ids 0 and 3 are words here, 1 is BOS, 2 is EOS
    model = TableModel(V, seed)
    rules = Rules(can_end=torch.tensor([True, False, False, True, False, True]), no_repeat_word=seed == 2)
    plain = Rules()
    for constraint in (plain, rules):
        expected, score = exhaustive(model, norm, constraint, max_len)
        result = beam_search(
            model.step, model.start(4**max_len), torch.tensor([BOS]), 4**max_len, max_len, EOS, norm, constraint
        )
        assert result.tokens[0] == expected
        assert result.scores[0].item() == pytest.approx(score, abs=1e-4)
        contexts = [BOS, BOS, *expected]  # each word's trace: the two tokens before it
        assert result.traces[0].tolist() == [[contexts[j], contexts[j + 1]] for j in range(len(expected))]


def test_the_traces_follow_the_returned_caption_back():
    """Each word's trace is found again through the parent pointers: long captions (the ending made
    unlikely) in a wide beam, whose rows are reshuffled at every step."""
    for seed in range(3):
        model = TableModel(6, seed)
        model.logits[:, :, EOS] -= 30.0  # so that, ranked by the mean, the longest captions win
        result = beam_search(model.step, model.start(64), torch.tensor([BOS]), 64, 5, EOS, Norm("mean"), Rules())
        words = result.tokens[0]
        contexts = [BOS, BOS, *words]
        assert len(words) == 5
        assert result.traces[0].tolist() == [[contexts[j], contexts[j + 1]] for j in range(len(words))]


def test_the_n_best_are_the_exhaustive_n_best():
    V, max_len = 5, 3
    model = TableModel(V, 4)
    words = [w for w in range(V) if w not in (BOS, EOS)]
    every = [list(s) for n in range(1, max_len + 1) for s in itertools.product(words, repeat=n)]
    norm = Norm("gnmt", 1.0)
    ranked = sorted(every, key=lambda s: -model.log_prob(s) / norm.penalty(len(s) + 1).item())
    result = beam_search(
        model.step, model.start(3**max_len), torch.tensor([BOS]), 3**max_len, max_len, EOS, norm, n_best=5
    )
    assert [tokens for tokens, _ in result.candidates[0]] == ranked[:5]
    scores = [score for _, score in result.candidates[0]]
    assert scores == sorted(scores, reverse=True) and scores[0] == pytest.approx(result.scores[0].item())


def test_an_ended_hypothesis_leaves_the_beam():
    """A beam of 2 where after the first word ending is the best step: the old search kept that ending in
    one of its two slots and searched on with the other only; now both slots go on, and both long
    captions are found."""
    logits = torch.full((6, 6, 6), -20.0)
    logits[BOS, BOS, 0] = 0.0  # the first word is 0
    logits[BOS, 0, EOS], logits[BOS, 0, 4], logits[BOS, 0, 5] = 0.0, -0.7, -0.8  # ending at once is likeliest
    logits[0, 4, 3] = logits[0, 5, 3] = logits[4, 3, EOS] = logits[5, 3, EOS] = 0.0  # then sure paths
    model = TableModel(6, 0)
    model.logits = logits
    result = beam_search(model.step, model.start(2), torch.tensor([BOS]), 2, 5, EOS, Norm("mean"), Rules(), n_best=3)
    assert [tokens for tokens, _ in result.candidates[0]] == [[0], [0, 4, 3], [0, 5, 3]]  # mean: -0.33, -0.34, -0.37


@pytest.mark.parametrize("seed", range(6))
def test_no_decoding_ever_breaks_a_rule(seed):
    """Property test: random decoders, random rules; greedy, sampled and beam captions obey them all."""
    generator = torch.Generator().manual_seed(seed)
    decoder, memory = make_decoder(), torch.randn(6, 5, 6, generator=generator)
    with torch.no_grad():
        for parameter in decoder.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator))
    can_end = torch.rand(V, generator=generator) < 0.5
    can_end[3 + torch.randperm(V - 3, generator=generator)[:5]] = True  # enough words to end on at the limit
    max_len = int(torch.randint(3, 9, (1,), generator=generator))
    min_len, n = (
        int(torch.randint(1, 3, (1,), generator=generator)),
        int(torch.randint(2, 4, (1,), generator=generator)),
    )
    apart, same = torch.zeros(V, dtype=torch.bool), torch.arange(V)
    apart[4:8], same[4], same[5] = True, 8, 9  # class words: 4-7 never in a row, 4 and 5 spell words 8 and 9
    classes = {"apart": apart, "same": same} if seed % 2 else {}
    rules = Rules(can_end, min_len, no_repeat_word=True, no_repeat_ngram=n, never=(0, BOS), **classes)
    step = step_function(decoder, memory)
    start = torch.full((6,), BOS)
    results = [
        greedy(step, decoder.init_state(memory), start, max_len, EOS, rules),
        sample(step, decoder.init_state(memory), start, max_len, EOS, 1.5, None, generator, rules),
        decode(decoder, memory, 3, max_len, 0.5, rules),
        decode(decoder, memory, 1, max_len, 0.0, rules),
    ]
    for result in results:
        for tokens in result.tokens:
            assert not {0, BOS, EOS} & set(tokens)
            assert allowed(tokens, rules, max_len), tokens


def test_batched_beam_with_rules_equals_one_at_a_time():
    decoder, memory = make_decoder("gru"), torch.randn(5, 4, 6)
    rules = Rules(torch.tensor([i % 3 == 0 for i in range(V)]), 2, True, 3)
    batched = decode(decoder, memory, 3, alpha=0.9, rules=rules, n_best=2)
    for i in range(memory.size(0)):
        single = decode(decoder, memory[i : i + 1], 3, alpha=0.9, rules=rules, n_best=2)
        assert single.tokens[0] == batched.tokens[i]
        assert [c for c, _ in single.candidates[0]] == [c for c, _ in batched.candidates[i]]
        torch.testing.assert_close(single.traces[0], batched.traces[i], rtol=1e-5, atol=1e-6)


def test_end_shares_and_sentence_checks_by_hand():
    from types import SimpleNamespace

    from captioner.data.loaders import end_statistics
    from captioner.data.manifest import ImageRecord
    from captioner.models.captioner import Captioner
    from captioner.scoring import caption_endings, sentence_checks
    from captioner.vocab import Vocab

    captions = ["a red truck", "the letter a", "a truck and a red car", "a rare word"]
    records = [ImageRecord(f"{i}.png", "train", [c]) for i, c in enumerate(captions)]
    manifest = SimpleNamespace(split=lambda name: records if name == "train" else [])
    vocab = Vocab(["a", "red", "truck", "the", "letter", "and", "car"])  # "rare" and "word" are <unk>
    model = Captioner(torch.nn.Identity(), AttentionDecoder(len(vocab), 6, 5, 8, 7))
    end_shares, leads, _ = end_statistics(manifest, vocab)
    assert leads is None  # no class words
    model.decoder.set_end_shares(end_shares)
    shares = dict(zip(vocab.itos, model.decoder.end_share.tolist(), strict=True))
    assert shares["a"] == pytest.approx(1 / 4) and shares["truck"] == 1 / 2 and shares["car"] == 1.0
    assert shares["red"] == 0.0 and shares["<unk>"] == 1.0 and shares["<pad>"] == 0.0
    can_end = model.decoding(DecodeConfig(end_share=0.3))[1].can_end
    assert [vocab.itos[i] for i in can_end.nonzero().flatten().tolist()] == ["<unk>", "truck", "car"]
    checks = sentence_checks([["a", "red"], ["a", "truck", "truck"], []], caption_endings(records))
    assert checks == {"unfinished": 2, "repeats": 1, "words": 5 / 3}


class PerInputTables:
    """Several TableModels searched as one batch: each input's table is a per-input constant of the step
    function, as a captioner's image memory is, and narrow() keeps the tables of the inputs still searched."""

    def __init__(self, models: list[TableModel], beam_size: int):
        self.tables, self.beam_size, self.narrowed = torch.stack([m.logits for m in models]), beam_size, []

    def step(self, tokens, state):
        state = torch.stack([state[:, 1], tokens], dim=1)
        table = self.tables.repeat_interleave(self.beam_size, dim=0)  # (rows, V, V, V)
        return table[torch.arange(len(tokens)), state[:, 0], state[:, 1]], state, state.float()

    def narrow(self, keep):
        self.tables = self.tables[keep]
        self.narrowed.append(len(keep))


@pytest.mark.parametrize("norm", [Norm(), Norm("mean")], ids=lambda n: n.kind)
def test_inputs_that_are_done_leave_the_batch_and_nothing_changes(norm):
    """Inputs that end early (every other one, the ending made likely) leave the batch; what each input gets
    (best, n best, scores, traces) is what it gets searched alone."""
    K, max_len = 3, 6
    models = [TableModel(6, seed) for seed in range(6)]
    for model in models[::2]:  # a sure first word, then the ending
        model.logits[BOS, BOS, 3] += 8.0
        model.logits[:, :, EOS] += 8.0
    for model in models[1::2]:
        model.logits[:, :, EOS] -= 8.0
    batch = PerInputTables(models, K)
    start = torch.full((len(models),), BOS)
    batched = beam_search(
        batch.step, torch.full((len(models) * K, 2), BOS), start, K, max_len, EOS, norm, Rules(), 2, batch.narrow
    )
    assert batch.narrowed and batch.narrowed[-1] < len(models)  # some inputs left, and the search went on
    for i, model in enumerate(models):
        alone = beam_search(model.step, model.start(K), torch.tensor([BOS]), K, max_len, EOS, norm, Rules(), 2)
        assert batched.tokens[i] == alone.tokens[0]
        assert [c for c, _ in batched.candidates[i]] == [c for c, _ in alone.candidates[0]]
        assert [s for _, s in batched.candidates[i]] == pytest.approx([s for _, s in alone.candidates[0]])
        torch.testing.assert_close(batched.scores[i], alone.scores[0])
        torch.testing.assert_close(batched.traces[i], alone.traces[0])
        for a, b in zip(batched.candidate_traces[i], alone.candidate_traces[0], strict=True):
            torch.testing.assert_close(a, b)


def _table_step(table):
    """A step function over a fixed table of logits (V, V) (the next word's logits given the last word), as
    torch tensors or NumPy arrays: the search must not tell them apart."""

    def step(tokens, state):
        return table[tokens] + state, state, table[tokens][:, :4]

    return step


@pytest.mark.parametrize("beam_size, n_best", [(1, 1), (3, 1), (3, 2)])
def test_the_search_and_rules_give_the_same_on_numpy_arrays_as_on_tensors(beam_size, n_best):
    generator = torch.Generator().manual_seed(0)
    table, bias = torch.randn(9, 9, generator=generator), torch.randn(4, 1, generator=generator)
    can_end = torch.tensor([False, False, True, False, True, True, False, True, True])
    rules = Rules(can_end, min_len=2, no_repeat_word=True, no_repeat_ngram=2, never=(0, 1))
    numpy_rules = Rules(can_end.numpy(), 2, True, 2, never=(0, 1))
    start = torch.full((4,), 1)
    runs = []
    for rows, start_tokens, rule in ((bias, start, rules), (bias.numpy(), start.numpy(), numpy_rules)):
        step = _table_step(table if rule is rules else table.numpy())
        state = rows.repeat_interleave(beam_size, 0) if rule is rules else rows.repeat(beam_size, 0)
        if beam_size > 1 or n_best > 1:
            runs.append(beam_search(step, state, start_tokens, beam_size, 6, 2, Norm("gnmt", 0.7), rule, n_best))
        else:
            runs.append(greedy(step, rows, start_tokens, 6, 2, rule))
    ours, theirs = runs
    assert ours.tokens == theirs.tokens and isinstance(theirs.scores, np.ndarray)
    assert np.allclose(ours.scores.numpy(), theirs.scores, atol=1e-5)
    assert all(np.allclose(a.numpy(), b) for a, b in zip(ours.traces, theirs.traces, strict=True))
    assert (ours.candidates is None) == (theirs.candidates is None)
    for a, b in zip(ours.candidates or [], theirs.candidates or [], strict=True):
        assert [t for t, _ in a] == [t for t, _ in b]


def test_beam_search_of_no_inputs_gives_nothing():
    empty = torch.zeros(0, dtype=torch.long)
    result = beam_search(_table_step(torch.randn(5, 5)), torch.zeros(0, 1), empty, 3, 4, 2)
    assert result.tokens == [] and result.scores.shape == (0,)
