"""The captioner model: shapes, gradients to every parameter, encoders, loss."""

from __future__ import annotations

import pytest
import torch

from captioner.config import Config
from captioner.data.manifest import collate_captions
from captioner.errors import ConfigError
from captioner.models import attention as attention_module
from captioner.models import linear
from captioner.models.attention import AdditiveAttention
from captioner.models.captioner import Captioner, caption_loss
from captioner.models.decoder import AttentionDecoder
from captioner.models.image_encoder import EncoderError, ImageEncoder
from tests.conftest import TINY_ENCODER, tiny_config


def small_captioner(cell="lstm", num_layers=1, visual_word_groups=0) -> Captioner:
    config = Config.from_dict(
        {
            "encoder": dict(TINY_ENCODER),
            "decoder": {
                "embed_dim": 8,
                "hidden_dim": 12,
                "attention_dim": 10,
                "cell": cell,
                "num_layers": num_layers,
                "dropout": 0.2,
                "visual_word_groups": visual_word_groups,
            },
        }
    )
    return Captioner.from_config(config, vocab_size=15)


@pytest.mark.parametrize(
    ("cell", "num_layers", "visual_word_groups"),
    [("lstm", 1, 0), ("lstm", 2, 0), ("gru", 2, 0), ("rnn", 1, 0), ("lstm", 1, 2)],
)
def test_every_parameter_gets_a_finite_gradient(cell, num_layers, visual_word_groups):
    model = small_captioner(cell, num_layers, visual_word_groups).train()
    if visual_word_groups:
        model.decoder.set_visual_words([[5, 6], [7, 8, 9]])
    images = torch.randn(3, 3, 32, 32)
    tokens = torch.randint(4, 15, (3, 7))
    tokens[2, 5:] = 0  # a padded caption
    logits, alphas = model(images, tokens[:, :-1])
    assert logits.shape == (3, 6, 15) and alphas.shape == (3, 6, 16)
    loss, _ = caption_loss(logits, tokens[:, 1:], alphas, attention_penalty=1.0)
    loss.backward()
    for name, param in model.named_parameters():
        if name == "decoder.embedding.weight":  # the PAD row never gets a gradient, by design
            assert param.grad[1:].abs().sum() > 0 and torch.all(param.grad[0] == 0)
            continue
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name} has a non-finite gradient"
        assert param.grad.abs().sum() > 0, f"{name} got a zero gradient"


def test_attention_weights_are_distributions_and_respect_the_mask():
    decoder = AttentionDecoder(10, 6, 5, 8, 7, dropout=0.0).eval()
    memory = torch.randn(2, 5, 6)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    _, alphas = decoder(memory, torch.randint(4, 10, (2, 4)), mask)
    torch.testing.assert_close(alphas.sum(-1), torch.ones(2, 4))
    assert torch.all(alphas[1, :, 3:] == 0)


@pytest.mark.parametrize("onednn", [False, True])  # False: every product as F.linear (MKL on a CPU)
@pytest.mark.parametrize("decoding", [False, True])  # True: as decode() steps (no gradients, no dropout)
def test_teacher_forcing_equals_stepping(decoding, onednn, monkeypatch):
    if onednn and not linear._ONEDNN:
        pytest.skip("this torch has no oneDNN")
    monkeypatch.setattr(linear, "_ONEDNN", onednn)
    decoder = AttentionDecoder(10, 6, 5, 8, 7, num_layers=2, dropout=0.3).eval()
    memory, tokens = torch.randn(2, 5, 6), torch.randint(4, 10, (2, 6))
    logits, alphas = decoder(memory, tokens)
    with torch.set_grad_enabled(not decoding):
        attended, state = decoder.prepare(memory, decoding=decoding), decoder.init_state(memory)
        assert attended.decoding == decoding
        assert (attended.classifier_t is not None) == (decoding and not onednn)  # MKL: the weight transposed once
        for t in range(6):
            step_logits, state, alpha = decoder.step(tokens[:, t], state, attended)
            torch.testing.assert_close(step_logits, logits[:, t], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(alpha, alphas[:, t], rtol=1e-5, atol=1e-6)


def test_penalty_is_zero_when_attention_covers_each_position_once():
    T = P = 4
    alphas = torch.eye(P).unsqueeze(0)  # step t looks only at position t
    logits = torch.zeros(1, T, 6)
    targets = torch.full((1, T), 5)
    total, xent = caption_loss(logits, targets, alphas, attention_penalty=3.0)
    torch.testing.assert_close(total, xent)
    uniform = torch.full((1, T, P), 1.0 / P)
    total, xent = caption_loss(logits[:, :2], targets[:, :2], uniform[:, :2], attention_penalty=1.0)  # covers half
    torch.testing.assert_close(total - xent, torch.tensor(0.25))


def test_resnet_trunk_gives_a_grid_and_freezes():
    encoder = ImageEncoder("resnet18", weights=None, grid_size=3, fine_tune_stages=1)
    memory = encoder(torch.randn(2, 3, 96, 96))
    assert memory.shape == (2, 9, 512)
    trained = {n.split(".")[0] for n, p in encoder.trunk.named_parameters() if p.requires_grad}
    assert trained == {"4"}  # only layer4, the last stage
    encoder.train()
    assert not encoder.trunk[0].training and encoder.trunk[4].training  # frozen BatchNorm stays in eval


def test_resnet_weights_from_a_local_state_dict(tmp_path):
    import torchvision

    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    encoder = ImageEncoder("resnet18", weights=str(path), grid_size=2)
    torch.testing.assert_close(encoder.trunk[0][0].weight, reference.conv1.weight)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(EncoderError, match="wrong.pth"):
        ImageEncoder("resnet18", weights=str(tmp_path / "wrong.pth"))
    with pytest.raises(EncoderError, match="does not exist"):
        ImageEncoder("resnet18", weights=str(tmp_path / "absent.pth"))


def test_unknown_backbone_and_weights_are_named():
    with pytest.raises(EncoderError, match="resnet7"):
        ImageEncoder("resnet7")
    with pytest.raises(EncoderError, match="NOPE"):
        ImageEncoder("resnet18", weights="NOPE")


def test_efficientnet_lite0_when_installed():
    pytest.importorskip("efficientnet_lite_pytorch")
    encoder = ImageEncoder("efficientnet_lite0", weights=None, grid_size=7, fine_tune_stages=0)
    assert encoder(torch.randn(1, 3, 224, 224)).shape == (1, 49, 1280)
    assert not encoder.fine_tuned


def test_word_dropout_hides_words_behind_unk_in_training_only():
    torch.manual_seed(0)
    decoder = AttentionDecoder(10, 6, 5, 8, 7, dropout=0.0, word_dropout=1.0, unk_id=3)
    memory, tokens = torch.randn(2, 5, 6), torch.tensor([[1, 5, 6, 7], [1, 8, 0, 0]])
    hidden = torch.tensor([[1, 3, 3, 3], [1, 3, 0, 0]])  # BOS and PAD stay, every word becomes UNK
    decoder.train()
    dropped, _ = decoder(memory, tokens)
    decoder.word_dropout = 0.0
    torch.testing.assert_close(dropped, decoder(memory, hidden)[0])
    decoder.word_dropout = 1.0
    decoder.eval()
    torch.testing.assert_close(decoder(memory, tokens)[0], decoder.eval()(memory, tokens)[0])
    assert not torch.allclose(decoder(memory, tokens)[0], decoder(memory, hidden)[0])


def test_visual_words_come_from_the_context_and_the_language_model_only_times_them():
    decoder = AttentionDecoder(10, 6, 5, 8, 7, dropout=0.0, visual_word_groups=2).eval()
    memory, tokens = torch.randn(3, 5, 6), torch.randint(4, 10, (3, 4))
    plain, _ = decoder(memory, tokens)  # no visual words chosen yet: the plain deep output's distribution
    groups = [[5, 6], [7, 8, 9]]
    decoder.set_visual_words(groups)
    scores, alphas = decoder(memory, tokens)
    torch.testing.assert_close(scores.exp().sum(-1), torch.ones(3, 4))
    language = torch.log_softmax(plain, -1)
    others = [0, 1, 2, 3, 4]
    torch.testing.assert_close(scores[..., others], language[..., others])  # other words: the LM's own
    contexts = torch.bmm(alphas, memory)  # (B, T, D): the attended context of every step
    for group in groups:
        probs = scores[..., group].exp()
        torch.testing.assert_close(probs.sum(-1), language[..., group].exp().sum(-1))  # the LM sets the slot
        which = torch.softmax(decoder.visual_classifier(contexts)[..., group], -1)
        torch.testing.assert_close(probs / probs.sum(-1, keepdim=True), which)  # the context picks the word
    with pytest.raises(ValueError, match="one visual word group only"):
        decoder.set_visual_words([[5, 6], [6, 7]])
    with pytest.raises(ValueError, match="built for 2 visual word groups, not 1"):
        decoder.set_visual_words([[5]])


def test_output_without_the_previous_word_ignores_it():
    """output_word=False drops E y_{t-1} from the deep output: the output layer ignores the embedding."""
    decoder = AttentionDecoder(10, 6, 5, 8, 7, dropout=0.0, output_word=False).eval()
    memory = torch.randn(2, 5, 6)
    attended, state = decoder.prepare(memory), decoder.init_state(memory)
    embedded = decoder.embedding(torch.tensor([4, 4]))
    hidden, context, gated, _, _ = decoder._recur(decoder.core.project_input(embedded, stop=5), state, attended)
    with_word = decoder._output(embedded, hidden, context, gated)
    torch.testing.assert_close(with_word, decoder._output(torch.zeros_like(embedded), hidden, context, gated))
    decoder.output_word = True
    assert not torch.allclose(with_word, decoder._output(embedded, hidden, context, gated))


def test_label_smoothing_moves_probability_to_every_word():
    logits = torch.tensor([[[10.0, -10.0, -10.0, -10.0]]])
    targets, alphas = torch.tensor([[0]]), torch.ones(1, 1, 1)
    sharp, _ = caption_loss(logits, targets, alphas, 0.0, label_smoothing=0.0, pad_id=-1)
    smooth, _ = caption_loss(logits, targets, alphas, 0.0, label_smoothing=0.3, pad_id=-1)
    assert sharp < 1e-6 < smooth  # a confident right answer costs something once targets are smoothed


def test_visual_groups_unset_or_empty():
    """Before set_visual_words the groups select nothing: the output is the language model's and gradients
    stay finite; an empty group is refused when the groups are set."""
    decoder = AttentionDecoder(10, 6, 5, 8, 7, dropout=0.0, visual_word_groups=2).train()
    memory, tokens = torch.randn(2, 5, 6), torch.randint(4, 10, (2, 3))
    scores, _ = decoder(memory, tokens)
    scores.logsumexp(-1).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in decoder.parameters() if p.grad is not None)
    with pytest.raises(ValueError, match="at least one word"):
        decoder.set_visual_words([[5, 6], []])


@pytest.mark.parametrize("chunk", [1 << 21, 1])  # one chunk, and one memory row per chunk
def test_attention_is_the_tanh_formula_with_queries_sharing_a_memory_row(monkeypatch, chunk):
    monkeypatch.setattr(attention_module, "_CPU_CHUNK", chunk)
    attention = AdditiveAttention(memory_dim=6, query_dim=8, attention_dim=7)
    memory, query = torch.randn(3, 5, 6), torch.randn(3 * 4, 8)  # 4 queries per memory row
    mask = torch.tensor([[True] * 5, [True, True, False, False, False], [False, True, True, True, True]])
    context, alpha = attention(attention.project_memory(memory), memory, query, mask)
    for i in range(12):
        b = i // 4
        keys = attention.memory_proj(memory[b])  # (P, A)
        scores = attention.score(torch.tanh(keys + attention.query_proj(query[i]))).squeeze(-1)
        expected = torch.softmax(scores.masked_fill(~mask[b], float("-inf")), dim=-1)
        torch.testing.assert_close(alpha[i], expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(context[i], expected @ memory[b], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="5 queries"):
        attention(attention.project_memory(memory), memory, query[:5])


def test_compiled_step_equals_the_eager_step():
    decoder = AttentionDecoder(20, 6, 8, 8, 7, dropout=0.0)
    memory, tokens = torch.randn(3, 5, 6), torch.randint(4, 20, (3, 6))
    eager_logits, eager_alphas = decoder(memory, tokens)
    eager_grads = torch.autograd.grad(eager_logits.square().sum(), list(decoder.parameters()), allow_unused=True)
    decoder.compile_step()
    logits, alphas = decoder(memory, tokens)
    grads = torch.autograd.grad(logits.square().sum(), list(decoder.parameters()), allow_unused=True)
    torch.testing.assert_close(logits, eager_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(alphas, eager_alphas, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, eager_grads, strict=True):
        if want is not None:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_factored_cnn_streams_see_colour_and_form_apart():
    """The form stream is blind to colour, the colour stream to the arrangement of pixels within a cell."""
    encoder = ImageEncoder("factored_cnn", None, grid_size=4, fine_tune_stages=-1, width=16).eval()
    assert encoder.streams == (32, 16) and encoder.out_dim == 48
    colour_dim = encoder.streams[0]
    canvas = torch.ones(2, 3, 32, 32)  # white, normalised to [-1, 1]
    canvas[0, :, 4:20, 6:14] = torch.tensor([0.7, -0.7, -0.7])[:, None, None]  # a red bar
    canvas[1, :, 4:20, 6:14] = torch.tensor([-0.7, -0.4, 0.8])[:, None, None]  # the same bar in blue
    grid = encoder.grid(canvas)  # (2, 16, 48)
    torch.testing.assert_close(grid[0, :, colour_dim:], grid[1, :, colour_dim:])  # same form features
    assert not torch.allclose(grid[0, :, :colour_dim], grid[1, :, :colour_dim])  # different colour features
    # Shuffle the 2 x 2 pixel blocks inside every 8 x 8 cell: the colour stream's features do not change
    # (it reads blocks one at a time), the form stream's do.
    # y = 8 * cell_y + 2 * block_y + pixel_y, and the same for x: (B, 3, cell_y, cell_x, block, 2, 2)
    blocks = canvas.reshape(2, 3, 4, 4, 2, 4, 4, 2).permute(0, 1, 2, 5, 3, 6, 4, 7).reshape(2, 3, 4, 4, 16, 2, 2)
    blocks = blocks[:, :, :, :, torch.randperm(16, generator=torch.Generator().manual_seed(0))]
    shuffled = blocks.reshape(2, 3, 4, 4, 4, 4, 2, 2).permute(0, 1, 2, 4, 6, 3, 5, 7).reshape(2, 3, 32, 32)
    moved = encoder.grid(shuffled)
    torch.testing.assert_close(moved[..., :colour_dim], grid[..., :colour_dim])
    assert not torch.allclose(moved[..., colour_dim:], grid[..., colour_dim:])


def test_visual_word_streams_name_each_group_from_its_own_stream():
    decoder = AttentionDecoder(10, 6, 5, 8, 7, dropout=0.0, visual_word_groups=2, visual_streams=(2, 4))
    decoder.set_visual_words([[5, 6], [7, 8, 9]])
    context = torch.randn(3, 6, requires_grad=True)
    embedded, hidden = torch.randn(3, 5), torch.randn(3, 8)
    scores = decoder._output(embedded, hidden, context, context.detach())
    (colour_grad,) = torch.autograd.grad(scores[:, [5, 6]].sum(), context, retain_graph=True)
    (shape_grad,) = torch.autograd.grad(scores[:, [7, 8, 9]].sum(), context)
    # The slot's total comes from the language model; which word fills it, from the group's own channels.
    assert torch.all(colour_grad[:, 2:] == 0) and colour_grad[:, :2].abs().sum() > 0
    assert torch.all(shape_grad[:, :2] == 0) and shape_grad[:, 2:].abs().sum() > 0
    with pytest.raises(ValueError, match="one encoder stream per visual word group"):
        AttentionDecoder(10, 6, 5, 8, 7, visual_word_groups=2, visual_streams=(6,))
    with pytest.raises(ValueError, match="do not add up"):
        AttentionDecoder(10, 6, 5, 8, 7, visual_word_groups=2, visual_streams=(2, 3))
    config = Config.from_dict({"encoder": dict(TINY_ENCODER), "decoder": {"visual_word_streams": True}})
    with pytest.raises(ConfigError, match="factored_cnn"):
        Captioner.from_config(config, vocab_size=15)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("amp", [False, True])
def test_the_context_weight_gradient_summed_in_one_product_equals_the_step_by_step_sum(cell, amp):
    """Teacher forcing sums the context input weight's gradient over the steps in one product after the
    loop (SummedWeightGrad); every parameter's gradient equals the plain per-step computation's."""
    import copy

    torch.manual_seed(0)
    decoder = AttentionDecoder(30, 12, 8, 16, 10, cell=cell, dropout=0.0, num_layers=2 if cell == "gru" else 1)
    memory, tokens = torch.randn(4, 7, 12), torch.randint(1, 30, (4, 6))
    grads = []
    for summed in (True, False):
        model = copy.deepcopy(decoder)
        model._compiled = not summed  # the compiled step keeps the plain path
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            logits, alphas = model(memory, tokens)
            loss = logits.float().logsumexp(-1).mean() + alphas.float().pow(2).mean()
        loss.backward()
        grads.append({name: p.grad.float() for name, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=0, atol=2e-5 if amp else 1e-8)
    assert grads[0]["core.rnn.weight_ih_l0"].abs().sum() > 0


def test_a_decoder_argument_the_decoder_refuses_is_a_config_error(tmp_path):
    config = tiny_config(tmp_path, tmp_path / "run")
    config.decoder.cell = "transformer"
    with pytest.raises(ConfigError, match="decoder: unknown recurrent cell 'transformer'"):
        Captioner.from_config(config, 20, load_pretrained=False)


@pytest.mark.parametrize("queries", [1, 3])  # training (one query per memory row) and beam search (K beams)
@pytest.mark.parametrize("chunk", [1 << 21, 28, 90])  # one chunk, a row a chunk, 1-3 rows a chunk and a rest
def test_chunked_attention_scores_have_the_formulas_gradients(monkeypatch, chunk, queries):
    """The CPU's chunked scores (forward, and a backward that computes the sigmoid again) against autograd."""
    monkeypatch.setattr(attention_module, "_CPU_CHUNK", chunk)
    options = {"dtype": torch.float64, "requires_grad": True}
    keys, query = torch.randn(5, 1, 7, 4, **options), torch.randn(5, queries, 1, 4, **options)
    w = torch.randn(1, 4, **options)
    assert torch.autograd.gradcheck(attention_module._CpuScores.apply, (keys, query, w))
    formula = 2.0 * ((keys + query).sigmoid() @ w.t()).squeeze(-1)
    torch.testing.assert_close(attention_module._CpuScores.apply(keys, query, w), formula)


@pytest.mark.parametrize("shape", [(6, 5), (2, 3, 5), (5,), (0, 5)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_is_f_linear(shape, with_bias):
    """models/linear.py: without gradients oneDNN, with F.linear's values (over a slice of a weight's columns and an
    empty batch too); with gradients, a product marked few_shapes through oneDNN with F.linear's values and
    gradients (of the input, the weight and the bias, also of an input that needs none and a strided one), an
    unmarked one and autocast F.linear itself."""
    if not linear._ONEDNN:
        pytest.skip("this torch has no oneDNN")
    full, x = torch.randn(4, 9), torch.randn(*shape)
    bias = torch.randn(4) if with_bias else None
    for weight in (full[:, 2:7], full[:, :5].t().contiguous().t()):  # a slice; the transpose of a contiguous one
        with torch.no_grad():
            assert linear.uses_onednn(x, weight) == (x.numel() > 0)
            torch.testing.assert_close(linear.linear(x, weight, bias), torch.nn.functional.linear(x, weight, bias))
    full.requires_grad_()
    if bias is not None:
        bias.requires_grad_()
    assert not linear.uses_onednn(x, full)
    strided = torch.randn(*shape[:-1], 10)[..., ::2]  # every other column: not contiguous
    for inputs, input_grad in ((x, True), (x, False), (strided, True)):
        inputs = inputs.detach().requires_grad_(input_grad)
        upstream = torch.randn(*shape[:-1], 4)  # rows of different gradients: a mixed-up row order would show
        for few_shapes in (True, False):
            results = []
            for product in (linear.linear, torch.nn.functional.linear):
                args = (inputs, full[:, 2:7], bias) + ((few_shapes,) if product is linear.linear else ())
                out = product(*args)
                if inputs.numel():
                    ours = type(out.grad_fn).__name__ == "_RecordedLinearBackward"
                    assert ours == (few_shapes and product is linear.linear)
                out.backward(upstream)
                results.append([out.detach(), inputs.grad, full.grad, None if bias is None else bias.grad])
                inputs.grad = full.grad = None
                if bias is not None:
                    bias.grad = None
            for ours, theirs in zip(*results, strict=True):
                if ours is None or theirs is None:
                    assert ours is theirs
                elif few_shapes:
                    torch.testing.assert_close(ours, theirs)
                else:
                    assert torch.equal(ours, theirs)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        assert not linear.uses_onednn(x, full)
        assert linear.linear(x, full[:, :5], bias).dtype == torch.bfloat16


def test_in_training_only_a_steps_products_and_a_grids_keys_go_through_onednn(monkeypatch):
    """The recorded products that go through oneDNN take few shapes over a run: a step's (at most the batch's rows)
    and, for a decoder over an image grid (the captioner's), the keys' projection; the output layer and the
    embeddings' projection, whose rows change from batch to batch, do not."""
    if not linear._ONEDNN:
        pytest.skip("this torch has no oneDNN")
    rows = []
    recorded = linear._RecordedLinear.apply
    monkeypatch.setattr(
        linear._RecordedLinear, "apply", lambda x, *rest: rows.append(tuple(x.shape)) or recorded(x, *rest)
    )
    B, P, D = 3, 5, 6
    for grid_memory in (False, True):
        rows.clear()
        decoder = AttentionDecoder(12, D, 5, 8, 7, num_layers=2, dropout=0.0, grid_memory=grid_memory)
        logits, _ = decoder(torch.randn(B, P, D), torch.randint(4, 12, (B, 4)), steps=torch.tensor([4, 3, 1]))
        logits.sum().backward()
        keys = [shape for shape in rows if len(shape) == 3]
        assert keys == ([(B, P, D)] if grid_memory else [])
        steps = [shape for shape in rows if len(shape) != 3]
        assert steps and all(len(shape) == 2 and shape[0] <= B for shape in steps)
    assert Captioner.from_config(Config.from_dict({"encoder": TINY_ENCODER}), vocab_size=15).decoder.grid_memory


@pytest.mark.parametrize("layers", [1, 2])
def test_steps_leave_the_real_positions_and_their_gradients_unchanged(layers):
    """Rows that end early leave the step loop (steps): the logits, alphas and gradients of the positions the
    loss reads are those of the full loop, whether or not the rows come longest first."""
    torch.manual_seed(0)
    decoder = AttentionDecoder(12, 6, 5, 8, 7, num_layers=layers, dropout=0.0)
    memory, tokens = torch.randn(4, 5, 6), torch.randint(4, 12, (4, 6))
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[2, 3:] = False
    for steps in (torch.tensor([6, 4, 4, 1]), torch.tensor([2, 6, 1, 5])):  # longest first, and not
        real = torch.arange(6) < steps.unsqueeze(1)  # (B, T)
        results = []
        for given in (None, steps):
            logits, alphas = decoder(memory, tokens, mask, steps=given)
            loss = (logits.log_softmax(-1)[..., 5] * real).sum() + (alphas.square().sum(-1) * real).sum()
            results.append((logits[real], alphas[real], torch.autograd.grad(loss, list(decoder.parameters()))))
        (full_logits, full_alphas, full_grads), (logits, alphas, grads) = results
        torch.testing.assert_close(logits, full_logits, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(alphas, full_alphas, rtol=1e-5, atol=1e-6)
        for got, want in zip(grads, full_grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_collated_captions_come_longest_first():
    batch = [(torch.zeros(3, 2, 2), torch.tensor(ids)) for ids in ([1, 5, 2], [1, 5, 6, 7, 2], [1, 2], [1, 8, 9, 2])]
    _, captions = collate_captions(batch)
    assert (captions != 0).sum(1).tolist() == [5, 4, 3, 2]
    assert captions[0].tolist() == [1, 5, 6, 7, 2] and captions[3].tolist() == [1, 2, 0, 0, 0]
