"""Progress of a long run, wherever it runs: a tqdm bar on a terminal; elsewhere (a log file, CI,
nohup, a cluster job) a plain line at a steady interval, since a bar there prints nothing useful
until the end."""
from __future__ import annotations

import os
import sys
import time

# Seconds between plain lines; the environment variable lets a test (or an impatient user) shorten it.
INTERVAL_ENV = "PIPELINE_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 30.0


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
    """`update(n)` after each batch of rows; `note` adds engine details (shards done, retried)."""

    def __init__(self, total: int, initial: int = 0, desc: str = "rows", file=None, interval: float | None = None):
        self.file = file or sys.stderr
        self.total, self.done, self.desc, self.note = total, initial, desc, ""
        self.last = time.monotonic()
        self.started = self.start_rows = None      # the rate counts from the first rows (not start-up)
        self.printed = False
        self.bar = None
        if self.file.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="img", file=self.file, dynamic_ncols=True)
        self.interval = float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL)) if interval is None else interval

    def update(self, n: int, note: str | None = None):
        self.done += n
        if self.started is None:     # the clock starts when the first batch is in (start-up excluded)
            self.started, self.start_rows = time.monotonic(), self.done
        if note is not None:
            self.note = note
        if self.bar is not None:
            self.bar.update(n)
            if note:
                self.bar.set_postfix_str(note, refresh=False)
        elif time.monotonic() - self.last >= self.interval:
            self.line()

    def line(self):
        now = time.monotonic()
        self.last, self.printed = now, True
        rate = (self.done - self.start_rows) / max(now - self.started, 1e-9) if self.started else 0.0
        eta = _duration((self.total - self.done) / rate) if rate > 0 else "?"
        note = f", {self.note}" if self.note else ""
        print(f"{self.desc}: {self.done:,}/{self.total:,} rows ({100 * self.done / max(self.total, 1):.0f}%), "
              f"{rate:.1f} images/s, ETA {eta}{note}", file=self.file, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if self.bar is not None:
            self.bar.close()
        elif exc_type is None and self.printed:
            # the final state of a run long enough to have reported (a short one stays quiet: its
            # command's own output follows); after an error, the error line stays the last one
            self.line()
