"""How far training is, for a person watching: a bar on a terminal, a plain line in every log.

On a terminal tqdm draws a bar redrawn in place (it is not drawn at all when the output goes to a file, SLURM
or ``nohup``: a redrawn bar there is a wall of ``\\r``). Every ``trainer.log_every`` steps a line such as
``step 120/240 (50%) loss 0.4100 lr 1.20e-05 38 pairs/s eta 1m10s`` goes to the log (``train.log`` and the
console), so a redirected log says where training is and how long it has left. While the bar is drawn that
line is kept off the terminal (the bar says the same) and still reaches ``train.log``. The time left is the
wall time per step so far (evaluations and checkpoints included) times the steps left.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("afqmc_exp.training.progress")


class _NotOnTheTerminal(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != log.name


def terminal_handlers() -> list[logging.Handler]:
    """The root logger's handlers that write to a terminal (not files)."""
    return [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)
            and not isinstance(h, logging.FileHandler) and getattr(h.stream, "isatty", lambda: False)()]  # fmt: skip


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class Progress:
    """The bar (when ``show_bar`` and on a terminal) and the log lines of one fit, from step ``initial``."""

    def __init__(self, total: int, initial: int, show_bar: bool):
        from tqdm.auto import tqdm

        self.total, self.initial, self.started = total, initial, time.perf_counter()
        # disable=None: shown on a terminal only
        self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True,
                        disable=None if show_bar else True)  # fmt: skip
        self.quieted = terminal_handlers() if not self.bar.disable else []
        self.filter = _NotOnTheTerminal()
        for handler in self.quieted:
            handler.addFilter(self.filter)

    def step(self) -> None:
        self.bar.update(1)

    def report(self, step: int, loss: float, lr: float, pairs_per_s: float) -> None:
        """The line of a logged step, and the bar's loss and learning rate."""
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        done = step - self.initial
        left = (time.perf_counter() - self.started) / done * (self.total - step) if done else 0.0
        log.info("step %d/%d (%d%%) loss %.4f lr %.2e %.0f pairs/s eta %s", step, self.total,
                 100 * step // max(self.total, 1), loss, lr, pairs_per_s, duration(left))  # fmt: skip

    def close(self) -> None:
        self.bar.close()
        for handler in self.quieted:
            handler.removeFilter(self.filter)
