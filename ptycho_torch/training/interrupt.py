"""SIGTERM / SIGINT during training: save a resumable checkpoint, say how to resume, exit 143 / 130.

SLURM sends SIGTERM at a time limit or on preemption, a user presses Ctrl-C (SIGINT). Inside
`interruptible(...)` both signals only set a flag; `SaveOnInterrupt` (a Lightning callback) sees it
after the current optimisation step, writes `checkpoints/last.ckpt` atomically (optimizer, scheduler,
epoch and batch counters, loss history) and raises `TrainingInterrupted`. The command line turns that
into one line naming the resume command and exit status 128 + signal (143 for SIGTERM, 130 for SIGINT),
so no pipeline mistakes an interrupted run for a finished one. A second signal while the checkpoint is
being written is ignored; outside a Trainer (setup, data loading) the first signal interrupts at once.
`run_interruptibly` serves a driver that only waits (ptycho-dist train waiting for Ray Train): the
blocking call runs in a helper thread and the signal goes to the caller's `on_signal`.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Iterator, TypeVar

import lightning as L
from lightning.pytorch.callbacks import Callback

from ptycho_torch.training.interrupt_once import note_interrupt

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)
T = TypeVar("T")


class TrainingInterrupted(BaseException):
    """Training stopped on a signal. `checkpoint` is the resumable checkpoint written (or None).

    A BaseException, like KeyboardInterrupt, so that library code catching Exception (Ray, Lightning
    hooks) cannot swallow it."""

    def __init__(self, signum: int, checkpoint: Path | None = None, resume_hint: str = "",
                 detail: str | None = None) -> None:
        self.signum = int(signum)
        self.checkpoint = checkpoint
        self.resume_hint = resume_hint
        self.detail = detail
        super().__init__(self.message())

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def message(self) -> str:
        name = signal.Signals(self.signum).name
        saved = f"resumable checkpoint {self.checkpoint}" if self.checkpoint else "no checkpoint was written yet"
        if self.checkpoint is None and self.resume_hint:
            saved = "the latest checkpoint is kept"
        if self.detail:
            saved = self.detail
        hint = f"; resume with: {self.resume_hint}" if self.resume_hint else ""
        return f"interrupted by {name}: {saved}{hint}"


class InterruptState:
    """The signal received (if any) and whether a Trainer is running to act on it."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.trainer_running = False
        self.saving = False

    def handler(self, signum: int, frame: FrameType | None) -> None:
        note_interrupt()  # once training's handler is gone, the command line's ignores further presses
        if self.saving:
            return
        first = self.signum is None
        self.signum = signum
        if not self.trainer_running and first:
            raise TrainingInterrupted(signum)


@contextlib.contextmanager
def interruptible() -> Iterator[InterruptState]:
    """Route SIGTERM and SIGINT to an InterruptState for the duration (main thread only; elsewhere
    the signals keep their handlers and the state never fires)."""
    state = InterruptState()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    previous = {s: signal.getsignal(s) for s in HANDLED_SIGNALS}
    for s in HANDLED_SIGNALS:
        signal.signal(s, state.handler)
    try:
        yield state
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class BackgroundCall:
    """`fn()` running in a daemon thread: `done` is set when it returned or raised."""

    def __init__(self, fn: Callable[[], Any], name: str = "background-call") -> None:
        self.done = threading.Event()  # not Thread.is_alive(): a signal during join() marks a live thread stopped
        self._outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                self._outcome["result"] = fn()
            except BaseException as e:  # re-raised by get() in the caller's thread
                self._outcome["error"] = e
            finally:
                self.done.set()

        self._thread = threading.Thread(target=run, name=name, daemon=True)

    @property
    def succeeded(self) -> bool:
        return self.done.is_set() and "result" in self._outcome

    def get(self) -> Any:
        """fn's result, or its exception raised here."""
        if "error" in self._outcome:
            raise self._outcome["error"]
        return self._outcome["result"]


def run_interruptibly(fn: Callable[[], T], on_signal: Callable[[TrainingInterrupted, BackgroundCall], T],
                      name: str = "background-call") -> T:
    """`fn()` in a helper thread inside `interruptible()`, so that SIGTERM / SIGINT reach this (main)
    thread at once while fn blocks (a library's own SIGINT handler, e.g. Ray's, would otherwise decide
    what a signal does). On a signal, further ones are ignored and `on_signal(error, call)` decides:
    it raises (e.g. a TrainingInterrupted naming the checkpoint to resume from) or returns a result,
    e.g. `call.get()` once `call.succeeded`."""
    call = BackgroundCall(fn, name)
    with interruptible() as signals:
        call._thread.start()
        try:
            while not call.done.wait(0.2):
                pass
        except TrainingInterrupted as e:
            signals.saving = True
            return on_signal(e, call)
    return call.get()


class SaveOnInterrupt(Callback):
    """Checks the InterruptState after every training batch; on a signal saves `checkpoint` and raises
    TrainingInterrupted (Lightning tears the run down and re-raises it)."""

    def __init__(self, state: InterruptState, checkpoint: Path, resume_hint: str) -> None:
        self.state = state
        self.checkpoint = Path(checkpoint)
        self.resume_hint = resume_hint

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.state.trainer_running = True
        # Lightning put its own SIGTERM handler in front of ours at fit start; under DDP it broadcasts
        # from inside the handler, which deadlocks with the ranks' next collective. Ours only sets a
        # flag; Lightning restores the previous handlers (ours) at teardown.
        if threading.current_thread() is threading.main_thread():
            for s in HANDLED_SIGNALS:
                signal.signal(s, self.state.handler)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.state.trainer_running = False

    def _check(self, trainer: L.Trainer) -> None:
        # under DDP every rank must take part in the (collective) save: stop when any rank was signalled
        if not trainer.strategy.reduce_boolean_decision(self.state.signum is not None, all=False):
            return
        self.state.saving = True
        trainer.save_checkpoint(str(self.checkpoint))
        raise TrainingInterrupted(self.state.signum or signal.SIGTERM, self.checkpoint, self.resume_hint)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        # After an epoch's last batch the epoch's validation and History row are still to come; a
        # checkpoint saved here counts the epoch as done, so its resume skipped them and the loss
        # history lost that epoch. Such a signal is acted on at on_train_epoch_end instead.
        if batch_idx + 1 >= trainer.num_training_batches:
            return
        self._check(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # not at on_validation_end: validation runs before the epoch's own end hooks, so a save there
        # marked the epoch done before History recorded it, and a resumed run lost that epoch's row.
        # This hook runs after History's (the saver is the last callback), like ModelCheckpoint's.
        self._check(trainer)
