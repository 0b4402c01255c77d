"""Run Safe-CLIP training and kill the process with SIGKILL right after a chosen optimizer step.

    python -m tests.train_until STEP section.key=value ...

A test's way to interrupt a run at a known point, exactly as a crash or ``kill -9`` would: nothing
is flushed or cleaned up. The step callback is injected here, so the training code carries no test hook.
"""

from __future__ import annotations

import os
import signal
import sys

from safeclip.config import load_config
from safeclip.train import train


def main(argv: list[str]) -> None:
    stop_at = int(argv[0])

    def kill_at_step(run, logged) -> None:
        if run.state.step == stop_at:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    train(load_config(None, argv[1:]), on_step=kill_at_step)
    raise SystemExit(f"training ended before step {stop_at}")


if __name__ == "__main__":
    main(sys.argv[1:])
