"""Progress a user can see, in a terminal or in a log file.

In a terminal a tqdm bar; elsewhere (stderr redirected to a file, a batch job, a container
log) plain lines at most every ``interval`` seconds and at the end, with the rate and the
time left, so a long analysis never looks hung.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from tqdm.auto import tqdm


class Progress:
    """Counts work done on one stage.

    Args:
        total (int): units of work in all.
        desc (str): the stage's name, e.g. ``"attribution"``.
        unit (str): the unit's name. Default: ``"images"``.
        enabled (bool): False shows nothing. Default: True.
        stream (TextIO, optional): where to write. Default: ``sys.stderr``.
        interval (float): least seconds between two plain lines. Default: 10.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "images",
        enabled: bool = True,
        stream: TextIO | None = None,
        interval: float = 10.0,
    ) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream or sys.stderr
        self.enabled = enabled and total > 0
        self.interval = interval
        self.done = 0
        self._said = -1  # ``done`` when the last plain line was printed
        self._t0 = self._last = time.monotonic()
        tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._bar = (
            tqdm(total=total, desc=desc, unit=unit[:3], leave=False, file=self.stream)
            if self.enabled and tty
            else None
        )

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and time.monotonic() - self._last >= self.interval:
            self._line()

    def label(self, desc: str) -> None:
        """Name what is being done now (``attribution, model B (name)``)."""
        self.desc = desc
        if self._bar is not None:
            self._bar.set_description(desc, refresh=False)

    def _line(self) -> None:
        self._said = self.done
        self._last = now = time.monotonic()
        elapsed = max(now - self._t0, 1e-9)
        rate = self.done / elapsed
        pct = 100 * self.done / self.total
        text = f"{self.desc}: {self.done}/{self.total} {self.unit} ({pct:.0f} %), {rate:.1f}/s"
        if 0 < self.done < self.total and rate > 0:
            left = (self.total - self.done) / rate
            text += f", ~{left / 60:.0f} min left" if left >= 90 else f", ~{left:.0f} s left"
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self.done and self.done != self._said:  # not the same line twice
            self._line()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StageTimer:
    """Wall time per named stage, summed when a stage is entered twice (run.json's
    ``timings``)."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - t0, 4)
