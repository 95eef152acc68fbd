"""The progress bar of long loops (training, distillation): step, loss, it/s, time left."""

from __future__ import annotations

import time
from collections.abc import Callable

ProgressUpdate = Callable[..., None]
"""`update(step, loss)` after a step; `update(None)` when done."""


def loss_progress(enabled: bool, *, label: str, total: int, start: int) -> ProgressUpdate:
    """A rich progress bar with the loss and the rate since `start`; a no-op when disabled
    (other ranks, tests)."""
    if not enabled:
        return lambda *_: None
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    prog = Progress(TextColumn(label), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[rate]:.2f} it/s"),
                    TimeElapsedColumn(), TimeRemainingColumn())
    task = prog.add_task(label, total=total, completed=start, loss=float("nan"), rate=0.0)
    t0 = time.perf_counter()
    prog.start()

    def update(step: int | None, loss: float = float("nan")) -> None:
        if step is None:
            prog.stop()
            return
        prog.update(task, completed=step, loss=loss, rate=(step - start) / (time.perf_counter() - t0))

    return update
