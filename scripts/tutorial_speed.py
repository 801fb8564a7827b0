"""Decoder training and beam search, this package against sgrvinod's a-PyTorch-Tutorial-to-Image-Captioning, in one run.

    git clone https://github.com/sgrvinod/a-PyTorch-Tutorial-to-Image-Captioning /tmp/tutorial
    .venv/bin/python scripts/tutorial_speed.py --tutorial /tmp/tutorial --output tutorial_speed.json

The two run in turn, round after round (--pairs), each ratio taken from one round, and the medians reported: this
machine's speed drifts by 20% or more over minutes. The tutorial's code stays in its checkout; this harness imports
its models.py (DecoderWithAttention) and runs its caption.py caption_image_beam_search from the checkout's text,
with two changes that today's torch and SciPy need and that leave its work the same: the image reading
(scipy.misc.imread is gone) is replaced by the grid handed in, and `top_k_words / vocab_size` (a float index since
torch 1.5) becomes `//`. Both sides run at the COCO recipe's decoder shapes (a 14 x 14 grid of 2048 features, LSTM,
attention and embeddings 512, 10,000 words), fp32, on the same threads, from grids (no CNN):
- training: batches of 32 captions with the same word counts (scripts/benchmark.py draws them as COCO's), the
  tutorial's step as its train.py takes it (its forward, pack_padded_sequence, cross-entropy plus its doubly
  stochastic penalty, gradient clamping at 5, Adam), this package's through its real cached-grid loader
  (`scripts/benchmark.py --task train-grids`);
- beam 3: the tutorial's search one picture at a time, stopped after 20 steps (random weights never say
  <end>); this package's batched search up to 20 words over batches of 32 (`--task caption-grids`).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import benchmark  # noqa: E402 - scripts/benchmark.py: the coco recipe's caption lengths and its rows

from captioner.files import write_json  # noqa: E402

GRID, FEATURES, WIDTH, WORDS, BATCH = 14, 2048, 512, 10_000, 32


def tutorial_models(checkout: Path):
    spec = importlib.util.spec_from_file_location("tutorial_models", checkout / "models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.device = torch.device("cpu")
    return module


def tutorial_beam_search(checkout: Path):
    """caption_image_beam_search from the checkout's caption.py, reading a grid (14, 14, 2048) for the image."""
    source = (checkout / "caption.py").read_text()
    function = next(
        node
        for node in ast.parse(source).body
        if isinstance(node, ast.FunctionDef) and node.name == "caption_image_beam_search"
    )
    lines = ast.get_source_segment(source, function).splitlines()
    start = next(i for i, line in enumerate(lines) if "img = imread(image_path)" in line)
    stop = next(i for i, line in enumerate(lines) if "image = image.unsqueeze(0)" in line)
    lines[start:stop] = ["    image = image_path  # the grid handed in (no image to read)"]
    text = "\n".join(lines).replace("top_k_words / vocab_size", "top_k_words // vocab_size")
    # 20 steps, as this package's search below; the sequences still running then are handed in as complete (as
    # the ended ones are), or random weights, which never say <end>, would leave it nothing to return
    limit = "if step >= 20:\n" + "".join(
        f"            {line}\n"
        for line in (
            "complete_seqs.extend(seqs.tolist())",
            "complete_seqs_alpha.extend(seqs_alpha.tolist())",
            "complete_seqs_scores.extend(top_k_scores)",
        )
    )
    text = text.replace("if step > 50:\n", limit)
    if "top_k_words // vocab_size" not in text or "if step >= 20:" not in text:
        raise SystemExit("the tutorial's caption.py is not the one this harness knows")
    namespace = {"torch": torch, "F": F, "device": torch.device("cpu")}
    exec(compile(text, str(checkout / "caption.py"), "exec"), namespace)  # noqa: S102 - the tutorial's own code
    return namespace["caption_image_beam_search"]


def tutorial_training(models, lengths: list[int], seconds: float) -> float:
    """Captions per second of the tutorial's decoder training step (train.py's) over batches of these lengths."""
    from torch.nn.utils.rnn import pack_padded_sequence

    torch.manual_seed(0)
    decoder = models.DecoderWithAttention(WIDTH, WIDTH, WIDTH, WORDS, FEATURES)
    optimizer = torch.optim.Adam(decoder.parameters(), lr=4e-4)
    criterion = torch.nn.CrossEntropyLoss()
    grids = torch.randn(BATCH, GRID, GRID, FEATURES)
    done, start, batch = 0, None, 0
    while start is None or time.perf_counter() - start < seconds:
        if batch == 2:  # two warm-up batches
            start, done = time.perf_counter(), 0
        words = lengths[(batch * BATCH) % len(lengths) :][:BATCH]
        words += lengths[: BATCH - len(words)]
        caplens = torch.tensor([[n + 2] for n in words])  # <start> words <end>
        caps = torch.zeros(BATCH, max(words) + 2, dtype=torch.long)
        for row, n in enumerate(words):
            caps[row, : n + 2] = torch.randint(4, WORDS, (n + 2,))
        scores, caps_sorted, decode_lengths, alphas, _ = decoder(grids, caps, caplens)
        targets = caps_sorted[:, 1:]
        scores = pack_padded_sequence(scores, decode_lengths, batch_first=True).data
        targets = pack_padded_sequence(targets, decode_lengths, batch_first=True).data
        loss = criterion(scores, targets) + 1.0 * ((1.0 - alphas.sum(dim=1)) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        for group in optimizer.param_groups:  # utils.clip_gradient
            for param in group["params"]:
                if param.grad is not None:
                    param.grad.data.clamp_(-5.0, 5.0)
        optimizer.step()
        done += BATCH
        batch += 1
    return done / (time.perf_counter() - start)


def tutorial_beam(models, search, pictures: int) -> float:
    torch.manual_seed(0)
    decoder = models.DecoderWithAttention(WIDTH, WIDTH, WIDTH, WORDS, FEATURES).eval()
    word_map = {f"w{i}": i for i in range(WORDS - 2)} | {"<start>": WORDS - 2, "<end>": WORDS - 1}  # its length is V
    grids = torch.randn(pictures + 1, GRID, GRID, FEATURES)
    with torch.no_grad():
        search(lambda grid: grid, decoder, grids[0], word_map, beam_size=3)  # warm-up
        start = time.perf_counter()
        for grid in grids[1:]:
            search(lambda grid: grid, decoder, grid, word_map, beam_size=3)
    return pictures / (time.perf_counter() - start)


def ours(task: str, repeats: int) -> float:
    """This package's row of scripts/benchmark.py (coco recipe, fp32), in a process of its own."""
    command = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--recipe", "coco", "--dtype", "fp32"]
    with tempfile.TemporaryDirectory() as folder:
        table = Path(folder) / "rows.md"
        command += ["--task", task, "--beams", "3", "--repeats", str(repeats), "--output", str(table)]
        subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
        [row] = json.loads(table.with_suffix(".json").read_text())
    return round(row["throughput"], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tutorial", type=Path, required=True, help="a checkout of sgrvinod's tutorial")
    parser.add_argument("--pairs", type=int, default=3, help="rounds of the tutorial then this package (default 3)")
    parser.add_argument("--seconds", type=float, default=30.0, help="timed seconds of the tutorial's training a round")
    parser.add_argument("--pictures", type=int, default=20, help="pictures the tutorial's search captions a round")
    parser.add_argument("--repeats", type=int, default=2, help="this package's benchmark repeats a round (median)")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    models, search = tutorial_models(args.tutorial), tutorial_beam_search(args.tutorial)
    lengths = [len(words) for words in benchmark._captions(benchmark.RECIPES["coco"], 768)]
    rounds = []
    for _ in range(args.pairs):  # A B A B: each ratio from two runs next to each other, as this machine's speed drifts
        row = {"tutorial_train": round(tutorial_training(models, lengths, args.seconds), 1)}
        row["ours_train"] = ours("train-grids", args.repeats)
        row["tutorial_beam3"] = round(tutorial_beam(models, search, args.pictures), 2)
        row["ours_beam3"] = ours("caption-grids", args.repeats)
        row["train_ratio"] = round(row["ours_train"] / row["tutorial_train"], 2)
        row["beam3_ratio"] = round(row["ours_beam3"] / row["tutorial_beam3"], 1)
        print(json.dumps(row), flush=True)
        rounds.append(row)
    result = {"threads": threads, "rounds": rounds}  # the medians over the rounds, then every round
    result |= {key: statistics.median(row[key] for row in rounds) for key in rounds[0]}
    print(json.dumps({key: value for key, value in result.items() if key != "rounds"}, indent=1))
    if args.output:
        write_json(args.output, result)


if __name__ == "__main__":
    main()
