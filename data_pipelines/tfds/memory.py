"""Peak resident memory of a build: this process, and it plus its worker processes."""

from __future__ import annotations

import threading

import psutil


class PeakMemory:
    """Samples the RSS of this process and of it plus its descendants in a background thread.

    Use as a context manager; afterwards `main_mib` and `total_mib` hold the peaks in MiB
    (sampled every `interval_s` seconds, so a shorter spike can be missed).
    """

    def __init__(self, interval_s: float = 0.1):
        self.main_mib = self.total_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval_s,), daemon=True)

    def _run(self, interval_s: float) -> None:
        me = psutil.Process()
        while not self._stop.wait(interval_s):
            main = me.memory_info().rss
            total = main
            for child in me.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.NoSuchProcess:  # a worker that just exited
                    pass
            self.main_mib = max(self.main_mib, main / 2**20)
            self.total_mib = max(self.total_mib, total / 2**20)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
