"""The one training loop every task runs, and the run folder it writes.

A task (captioner.tasks.*) builds its data and model and hands the loop a Task: its stages (epochs trained
the same way: which batches, which loss), its validation (a dict of scores) and the score that picks
best.pt. The loop owns everything else, the same for every task: the optimizer (AdamW), the learning-rate
schedule, mixed precision and fp16 loss scaling, gradient clipping, the non-finite checks, the time and step
budget, one log line format, the run folder, data parallelism under torchrun and exact resume.

    RUN/config.yaml      the resolved config (defaults < recipe < overrides)
    RUN/NAME.json        each vocabulary (vocab.json; translation also source_vocab.json)
    RUN/metrics.jsonl    one JSON line per validation
    RUN/last.pt          the latest checkpoint: `--resume` continues from it exactly
    RUN/best.pt          the checkpoint with the best validation score (the final one where a task has none)
    RUN/tensorboard/     TensorBoard's event files: the curves, a task's figures (`tensorboard --logdir RUN`)

Every file is written atomically (captioner.files), so an interrupted run never leaves half of one.
loop.py holds the loop, steps.py the pieces of a step and of exact resume, run_folder.py the folder, board.py
what TensorBoard shows.
"""

from captioner.training.loop import Progress, Trainer, fit, log_line, start
from captioner.training.run_folder import RunFolder, silent
from captioner.training.steps import EpochOrder, schedule_factor
from captioner.training.task import Figures, Run, ShuffledTask, Stage, Task

__all__ = [
    "EpochOrder",
    "Figures",
    "Progress",
    "Run",
    "RunFolder",
    "ShuffledTask",
    "Stage",
    "Task",
    "Trainer",
    "fit",
    "log_line",
    "schedule_factor",
    "silent",
    "start",
]
