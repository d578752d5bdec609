"""Peak resident memory of this process while a block of code runs (psutil, sampled in a thread)."""
from __future__ import annotations

import threading
import time

import psutil


class PeakRSS:
    """``with PeakRSS() as m: ...`` then ``m.before``, ``m.peak``, ``m.after`` (bytes).

    RSS is sampled every `interval` seconds on a daemon thread; the peak also includes the
    samples taken on entry and exit. A sampler misses spikes shorter than its interval.
    """

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.before = self.peak = self.after = 0
        self.samples = 0
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss = self._proc.memory_info().rss
            if rss > self.peak:
                self.peak = rss
            self.samples += 1
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRSS":
        self.before = self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.after = self._proc.memory_info().rss
        self.peak = max(self.peak, self.after)

    def as_dict(self) -> dict:
        return {"rss_before_bytes": self.before, "rss_peak_bytes": self.peak, "rss_after_bytes": self.after,
                "rss_peak_increase_bytes": self.peak - self.before, "samples": self.samples,
                "interval_s": self.interval}
