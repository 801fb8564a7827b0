"""The exported captioner (ONNX Runtime) against the checkpoint it came from (PyTorch), the same run.

    .venv/bin/python scripts/onnx_parity.py --checkpoint runs/stamps/best.pt --data data/stamps \
        --photos data/photos --out benchmarks/onnx_parity.json

Exports the checkpoint, then captions the test split and the photos with both engines at beams 1 and 3:
identical captions?, the largest difference of a caption's score; the largest difference of any word's
log-probability over every step of those captions (the step graph against AttentionDecoder.step, teacher-forced
on PyTorch's caption); and the speed of each engine over the same pictures (pictures/s, same thread count,
reading the files included, as `captioner caption` does).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from captioner.data.manifest import load_manifest  # noqa: E402
from captioner.export import export  # noqa: E402
from captioner.files import write_json  # noqa: E402
from captioner.pipeline import CaptionModel  # noqa: E402
from captioner.runtime import OnnxCaptionModel  # noqa: E402


def step_difference(torch_model: CaptionModel, onnx_model: OnnxCaptionModel, files: list[str], results) -> float:
    """The largest |log p_torch - log p_onnx| over the vocabulary at every step of each picture's caption."""
    model, worst = torch_model.model, 0.0
    for start in range(0, len(files), 16):
        batch = [torch_model.prepare(f, onnx_picture(f, torch_model)) for f in files[start : start + 16]]
        captions = [torch_model.vocab.encode(r.words) for r in results[start : start + 16]]
        with torch.no_grad():
            memory = model.encoder(torch.stack([p.tensor for p in batch]))
            attended = model.decoder.prepare(memory, decoding=True, class_offset=model.class_offset)
            state = model.decoder.init_state(memory)
        names = onnx_model.names
        encoded = dict(
            zip(
                names["encoder_out"],
                onnx_model.encoder.run(None, {"images": np.stack([p.tensor.numpy() for p in batch])}),
                strict=True,
            )
        )
        states = [n for n in names["step_in"][1:] if n in ("h", "c")]
        onnx_state = [encoded[n] for n in states]
        constants = {n: encoded[n] for n in names["step_in"][1 + len(states) :]}
        tokens = torch.full((len(batch),), torch_model.vocab.bos_id, dtype=torch.long)
        for t in range(max(len(c) for c in captions) + 1):
            with torch.no_grad():
                scores, state, _ = model.decoder.step(tokens, state, attended)
            expected = torch.log_softmax(scores.float(), -1).numpy()
            feed = {"tokens": tokens.numpy(), **dict(zip(states, onnx_state, strict=True)), **constants}
            log_probs, *onnx_state, _ = onnx_model.step.run(None, feed)
            finite = np.isfinite(expected)
            worst = max(worst, float(np.abs(expected - log_probs)[finite].max()))
            nxt = [c[t] if t < len(c) else torch_model.vocab.eos_id for c in captions]
            tokens = torch.tensor(nxt, dtype=torch.long)
    return worst


def onnx_picture(path: str, model: CaptionModel):
    from captioner.inference import as_picture

    return as_picture(path, path, model.image_size)


def timed(model, files: list[str], beam_size: int) -> tuple[list, float]:
    model.caption(files[:8], beam_size=beam_size)  # warm up
    start = time.perf_counter()
    results = model.caption(files, beam_size=beam_size)
    return results, len(files) / (time.perf_counter() - start)


def compare(torch_model, onnx_model, files: list[str], beam_size: int) -> dict:
    expected, torch_speed = timed(torch_model, files, beam_size)
    got, onnx_speed = timed(onnx_model, files, beam_size)
    same = sum(a.caption == b.caption for a, b in zip(expected, got, strict=True))
    score = max(abs(a.score - b.score) for a, b in zip(expected, got, strict=True))
    return {
        "pictures": len(files),
        "beam": beam_size,
        "identical_captions": same,
        "max_score_difference": score,
        "max_log_prob_difference": step_difference(torch_model, onnx_model, files, expected),
        "pytorch_pictures_per_s": round(torch_speed, 2),
        "onnx_runtime_pictures_per_s": round(onnx_speed, 2),
        "differing": [
            (a.image, a.caption, b.caption) for a, b in zip(expected, got, strict=True) if a.caption != b.caption
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="runs/stamps/best.pt")
    parser.add_argument("--data", default="data/stamps", help="the data set whose test split is captioned")
    parser.add_argument("--photos", default="data/photos")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", help="write the rows as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp(prefix="onnx_parity_"))
    torch_model = CaptionModel.load(args.checkpoint, "cpu")
    encoder = torch_model.model.encoder
    export(
        torch_model.model,
        torch_model.config,
        torch_model.vocab,
        folder,
        torch_model.image_size,
        encoder.mean,
        encoder.std,
        args.checkpoint,
    )
    onnx_model = OnnxCaptionModel(folder, threads=args.threads)
    sets = {
        "test split": [str(r.path) for r in load_manifest(args.data).split("test")],
        "photos": sorted(str(p) for p in Path(args.photos).iterdir() if p.suffix in (".png", ".jpg")),
    }
    rows = []
    for name, files in sets.items():
        for beam in (1, 3):
            row = {"set": name, **compare(torch_model, onnx_model, files, beam)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    info = {"threads": args.threads, "checkpoint": args.checkpoint, "rows": rows}
    if args.out:
        write_json(args.out, info)


if __name__ == "__main__":
    main()
