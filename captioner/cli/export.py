"""`captioner export`: a captioner checkpoint as ONNX graphs for ONNX Runtime, over captioner.export."""

from __future__ import annotations

import argparse

from captioner.cli.arguments import add_command
from captioner.cli.captioning import checkpoint_argument


def export(args: argparse.Namespace) -> int:
    from captioner.export import export_checkpoint

    export_checkpoint(checkpoint_argument(args), args.out)
    print(f"caption with it: captioner caption --model {args.out} IMAGE ...  (Python: captioner.load({args.out!r}))")
    return 0


def add_commands(commands) -> None:
    parser = add_command(
        commands,
        "export",
        export,
        help="write a captioner as ONNX, to caption with ONNX Runtime without torch",
        description="Write OUT/encoder.onnx (pictures -> the grid and what every step reads), OUT/step.onnx (one "
        "decoder step with dynamic batch), the vocabulary, the decode settings and the sentence rules' word tables. "
        "`captioner caption --model OUT` and captioner.load(OUT) then caption through ONNX Runtime with the same "
        "beam search and rules, torch not needed. Exporting needs the export extra: pip install 'captioner[export]'.",
    )
    parser.add_argument(
        "--checkpoint",
        help="a checkpoint written by `captioner train` (default: $CAPTIONER_CHECKPOINT, else the demo's "
        "runs/stamps/best.pt)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="the folder to write (made if missing)")
