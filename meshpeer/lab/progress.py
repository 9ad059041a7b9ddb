"""Progress of long lab work: a stage that runs longer than a few seconds says so, with what
it has done so far ("340/2000 REST calls", "12/50 OHCs synced"), instead of staying silent
until it ends (issue 18: lab up at scale, image builds)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType

Progress = Callable[[str], None]
Note = Callable[[str], None]  # a stage tells its ticker what it has done so far


def no_note(_text: str) -> None:
    return


class Ticker:
    """While open, prints ``label … note (elapsed)`` every ``every`` seconds from a thread."""

    def __init__(self, progress: Progress, label: str, every: float = 5.0) -> None:
        self.progress = progress
        self.label = label
        self.every = every
        self.text = "working"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"ticker {label}", daemon=True)
        self._t0 = time.monotonic()

    def note(self, text: str) -> None:
        self.text = text

    def __enter__(self) -> Ticker:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.progress(f"{self.label} ... {self.text} ({time.monotonic() - self._t0:.0f}s)")
