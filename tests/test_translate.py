"""Translation on the captioner's decoder: encoder masks, batched decoding, the reversal task, TSV data, CLI."""

from __future__ import annotations

import pytest
import torch

from captioner.cli import main
from captioner.config import TranslateConfig
from captioner.data.pairs import read_pairs, synthetic_pairs
from captioner.models.registry import build_model, restore
from captioner.tasks.translation import fit as train_translator
from captioner.tasks.translation import generate as translate_batch
from captioner.tasks.translation import reversal_alignment
from captioner.text import tokenize_sentence as tokenize
from captioner.vocab import Vocab


def small_config(tmp_path, **model) -> TranslateConfig:
    return TranslateConfig.from_dict(
        {
            "data": {"train": "synthetic"},
            "model": {"embed_dim": 16, "hidden_dim": 32, "attention_dim": 16, "dropout": 0.0, **model},
            "train": {"run_dir": str(tmp_path / "run"), "epochs": 1, "batch_size": 64, "learning_rate": 0.003},
        }
    )


def test_tokenize_keeps_accents_and_splits_punctuation():
    assert tokenize("Dieu créa les cieux, et la terre.") == [
        "dieu",
        "créa",
        "les",
        "cieux",
        ",",
        "et",
        "la",
        "terre",
        ".",
    ]
    assert tokenize("L’homme") == ["l", "'", "homme"]


def test_padding_does_not_change_a_translation(tmp_path):
    """A sentence decoded alone equals the same sentence decoded in a batch next to a longer one."""
    torch.manual_seed(0)
    config = small_config(tmp_path)
    pairs = synthetic_pairs(50, 0)
    source_vocab = Vocab.build(s for s, _ in pairs)
    target_vocab = Vocab.build(t for _, t in pairs)
    model = build_model(config, {"source_vocab": source_vocab, "vocab": target_vocab}).eval()
    short, long = ["t1", "t2", "t3"], ["t4"] * 9
    alone, alone_attention = translate_batch(model, [short], source_vocab, target_vocab, max_len=6)
    together, attention = translate_batch(model, [short, long], source_vocab, target_vocab, max_len=6)
    assert together[0] == alone[0]
    torch.testing.assert_close(attention[0], alone_attention[0])
    assert attention[0].shape[1] == 4  # 3 words + EOS: no attention column for padding
    beams, _ = translate_batch(model, [short, long], source_vocab, target_vocab, beam_size=3, max_len=6)
    one_by_one = [
        translate_batch(model, [s], source_vocab, target_vocab, beam_size=3, max_len=6)[0][0] for s in (short, long)
    ]
    assert beams == one_by_one


def test_reversal_is_learned_with_attention_on_the_aligned_word(tmp_path):
    config = small_config(tmp_path)
    config.train.epochs = 3
    path = train_translator(config, log=lambda _: None)
    model, _, vocabularies = restore(path)
    source_vocab, target_vocab = vocabularies["source_vocab"], vocabularies["vocab"]
    test = synthetic_pairs(300, 3)
    outputs, _ = translate_batch(model, [s for s, _ in test], source_vocab, target_vocab)
    exact = sum(o == t for o, (_, t) in zip(outputs, test, strict=True)) / len(test)
    assert exact > 0.9
    assert reversal_alignment(model, test, source_vocab, target_vocab) > 80


def test_without_attention_the_memory_is_the_final_state(tmp_path):
    config = small_config(tmp_path, attention=False)
    vocab = Vocab([f"w{i}" for i in range(26)])  # 4 special tokens + 26 words: 30 ids
    model = build_model(config, {"source_vocab": vocab, "vocab": vocab})
    src = torch.randint(4, 30, (2, 5))
    memory, mask = model.memory(src, torch.tensor([5, 3]))
    assert memory.shape == (2, 1, model.encoder.out_dim) and mask is None
    _, alphas = model(src, torch.tensor([5, 3]), torch.randint(4, 30, (2, 4)))
    assert torch.equal(alphas, torch.ones(2, 4, 1))


def test_tsv_pairs_and_their_faults(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text(
        "Go.\tVa !\tCC-BY 2.0 (France) Attribution: tatoeba.org\nI won!\tJ'ai gagné !\n\n" + "a " * 40 + "\tb\n"
    )
    pairs = read_pairs(path, max_len=10)
    assert pairs == [
        (["go", "."], ["va", "!"]),
        (["i", "won", "!"], ["j", "'", "ai", "gagné", "!"]),
    ]  # long one left out
    path.write_text("no tab here\n")
    with pytest.raises(ValueError, match=r"pairs.tsv:1: expected source<TAB>target"):
        read_pairs(path, 10)
    with pytest.raises(ValueError, match="does not exist"):
        read_pairs(tmp_path / "absent.tsv", 10)


def test_translate_cli_train_translate_and_draw(tmp_path, capsys):
    config = tmp_path / "reverse.yaml"
    config.write_text(
        "data: {train: synthetic}\nmodel: {embed_dim: 16, hidden_dim: 32, attention_dim: 16, dropout: 0.0}\n"
        f"train: {{run_dir: {tmp_path / 'run'}, epochs: 1}}\n"
    )
    assert main(["translate", "train", "--config", str(config)]) == 0
    assert "pairs/s" in capsys.readouterr().out
    checkpoint = str(tmp_path / "run" / "best.pt")
    png = tmp_path / "align.png"
    assert (
        main(["translate", "text", "--checkpoint", checkpoint, "t1 t2 t3", "--attention", str(png), "--beam-size", "1"])
        == 0
    )
    out = capsys.readouterr().out.strip()
    assert len(out.split()) >= 1 and png.stat().st_size > 0
    (tmp_path / "sentences.txt").write_text("t1 t2\nt5 t6 t7\n")
    assert main(["translate", "text", "--checkpoint", checkpoint, "--file", str(tmp_path / "sentences.txt")]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    assert main(["translate", "text", "t1"]) == 2
    assert "needs --checkpoint" in capsys.readouterr().err


def test_reversal_alignment_moves_its_batches_to_the_models_device():
    """A spy whose one parameter lives on the meta device: the batches it receives must be there too (on a
    GPU, a batch left on the CPU ends the run after training, before test_scores.json is written)."""
    pairs = synthetic_pairs(20, 3)
    source_vocab = Vocab.build((s for s, _ in pairs), 1)
    target_vocab = Vocab.build((t for _, t in pairs), 1)
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.where = torch.nn.Parameter(torch.empty(1, device="meta"))

        def forward(self, src, lengths, tgt):
            seen.append((src.device.type, tgt.device.type))
            return None, torch.full((src.size(0), tgt.size(1), src.size(1)), 1.0 / src.size(1))  # alphas (B, T, S)

    reversal_alignment(Spy(), pairs, source_vocab, target_vocab)
    assert seen and all(devices == ("meta", "meta") for devices in seen)


def test_a_resumed_translator_ends_as_an_uninterrupted_one(tmp_path, capsys):
    pairs = "".join(f"t{i} t{i + 1} t{i + 2}\tt{i + 2} t{i + 1} t{i}\n" for i in range(40))
    for split in ("train", "val"):
        (tmp_path / f"{split}.tsv").write_text(pairs)
    recipe = tmp_path / "reverse.yaml"
    recipe.write_text(
        f"data: {{train: {tmp_path / 'train.tsv'}, val: {tmp_path / 'val.tsv'}, test: null, min_word_freq: 1}}\n"
        "model: {embed_dim: 8, hidden_dim: 16, attention_dim: 8, dropout: 0.3}\n"
        "train: {epochs: 3, batch_size: 8, lr_schedule: constant}\n"  # the same schedule when cut after 1 epoch
    )

    def run(name, *extra):
        return main(["translate", "train", "--config", str(recipe), f"train.run_dir={tmp_path / name}", *extra])

    assert run("straight") == 0
    assert run("resumed", "train.epochs=1") == 0
    assert run("resumed", "--resume") == 0
    assert "resuming" in capsys.readouterr().out
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert a["training"]["epoch"] == b["training"]["epoch"] == 3
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=0, atol=0)
    rows = [line for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3


def test_the_shuffle_follows_train_seed(tmp_path):
    from captioner.tasks.translation import TranslationTask
    from captioner.training import start

    seeds = []
    for seed in (0, 7):
        config = small_config(tmp_path / str(seed))
        config.train.seed = seed
        seeds.append(TranslationTask(start(config, log=lambda _: None)).order.generator.initial_seed())
    assert seeds == [0, 7]
