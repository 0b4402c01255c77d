"""Wall-clock seconds per named stage of a long command, printed as each stage ends."""

from __future__ import annotations

import time


class StageClock:
    """``clock.stage("base")`` records the seconds since the previous stage (or the start) under "base"
    and prints ``[tag] base done in N s``; ``clock.seconds`` maps stage names to seconds, in order."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def stage(self, name: str) -> float:
        now = time.perf_counter()
        self.seconds[name] = now - self._last
        self._last = now
        print(f"[{self.tag}] {name} done in {self.seconds[name]:.0f} s", flush=True)
        return self.seconds[name]
