"""A training run's folder, in the layout every task shares (captioner/training/__init__.py lists it)."""

from __future__ import annotations

import json
from pathlib import Path

from captioner.checkpoint import load_checkpoint, save_checkpoint
from captioner.errors import TrainingError
from captioner.files import json_objects, write_text, write_yaml
from captioner.vocab import Vocab

MEND = "mend or delete that line to resume the run"


def silent(*args, **kwargs) -> None:
    """The log of processes other than rank 0, and of callers that want none."""


class RunFolder:
    """A training run's folder, in the layout every task shares (the module docstring lists it).

    Only the main process writes (main=False: every write is a no-op), so data-parallel ranks can
    call the same methods.
    """

    def __init__(self, path: str | Path, main: bool = True):
        self.path = Path(path)
        self.main = main
        self.last = self.path / "last.pt"
        self.best = self.path / "best.pt"
        self.metrics = self.path / "metrics.jsonl"
        self.tensorboard = self.path / "tensorboard"  # TensorBoard's event files (training/board.py)

    def resume_from(self, kind: str) -> dict:
        """The last checkpoint, to continue a run from (CheckpointError, naming the file, if there is none)."""
        return load_checkpoint(self.last, kind=kind)

    def start(self, config, vocabs: dict[str, Vocab], resumed_step: int | None = None, log=silent) -> None:
        """Write config.yaml and NAME.json for every vocabulary; a new run also starts metrics.jsonl afresh.

        A run resumed from a checkpoint written after resumed_step steps keeps those steps' metrics rows only,
        not those of work done after the checkpoint and lost when the run was stopped.
        """
        if not self.main:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        if resumed_step is None or not self.metrics.is_file():
            self.metrics.write_text("")
        else:
            rows = self.metric_rows(log)
            kept = [line for line, row in rows if row.get("step", 0) <= resumed_step]
            write_text(self.metrics, "".join(line + "\n" for line in kept))  # a torn last line goes too
        write_yaml(self.path / "config.yaml", config.to_dict())
        for name, vocab in vocabs.items():
            vocab.save(self.path / f"{name}.json")

    def metric_rows(self, log=silent) -> list[tuple[str, dict]]:
        """(line, row) of every row of metrics.jsonl. A last line cut off before its end (no newline after it: the
        run stopped while writing it, by a full disk or a power cut) is left out with a warning; a line that is not
        a JSON object anywhere else is a TrainingError naming the file and the line."""
        lines = self.metrics.read_bytes().decode("utf-8", errors="replace").split("\n")  # not splitlines: U+2028
        last = lines.pop()  # "" when the file ends in a newline
        if last.strip():
            try:
                whole = isinstance(json.loads(last), dict)  # cut off just before its newline
            except json.JSONDecodeError:
                whole = False
            if whole:
                lines.append(last)
            else:
                log(
                    f"warning: {self.metrics}: left out its last line, cut off before its end by a run stopped while "
                    f"writing it"
                )
        try:
            return [(line, row) for _, line, row in json_objects(lines)]
        except ValueError as error:
            raise TrainingError(f"{self.metrics}, {error}; {MEND}") from None

    def log_metrics(self, row: dict) -> None:
        """Append one JSON line to metrics.jsonl."""
        if self.main:
            with open(self.metrics, "a") as file:
                file.write(json.dumps(row) + "\n")

    def save(self, payload: dict, best: bool) -> None:
        """Write last.pt, and best.pt too when this is the best checkpoint so far; never weights that are not finite."""
        if not self.main:
            return
        bad = [
            name
            for name, tensor in payload["model"].items()
            if tensor.is_floating_point() and not tensor.isfinite().all()
        ]
        if bad:
            raise TrainingError(
                f"not saving {self.last}: {len(bad)} weight tensors ({bad[0]}, ...) hold values that are not finite; "
                f"lower train.learning_rate or set train.grad_clip"
            )
        if best:  # first: a run stopped between the two resumes from the older last.pt and writes both again
            save_checkpoint(self.best, payload)
        save_checkpoint(self.last, payload)
