"""Stops every process of a local Ray instance once the command that started it has ended, however it ended.

`ray.shutdown()` covers a normal exit and Ctrl-C, but after a SIGKILLed driver Ray's DashboardAgent and
RuntimeEnvAgent wait out the GCS reconnect timeout and live on for ~65 s (measured, Ray 2.60), and any
actor its raylet has not reaped yet lives on too. So the driver marks the instance (an environment
variable that every process Ray starts inherits) and starts this watchdog in its own session with a pipe:
when the pipe closes (the driver exited, or died) the watchdog kills whatever still carries the mark.
Linux only (it reads /proc); elsewhere it does nothing.

    python -m pipeline.reaper MARK        # stdin: the driver's end of the pipe
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

MARK_ENV = "PIPELINE_RAY_INSTANCE"
GRACE_S = 10      # how long the watchdog keeps looking for late starters


def marked(mark: str) -> list[int]:
    """Processes (other than this one) whose environment carries MARK_ENV=mark."""
    needle = f"{MARK_ENV}={mark}\0".encode()
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (entry / "environ").read_bytes() and int(entry.name) != os.getpid():
                pids.append(int(entry.name))
        except (OSError, ValueError):
            pass          # gone already, or not ours to read
    return pids


def kill_marked(mark: str) -> None:
    """Kill until none is left (a dying raylet can still be starting a worker), for at most GRACE_S."""
    deadline = time.monotonic() + GRACE_S
    while (pids := marked(mark)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.2)


def start(mark: str) -> subprocess.Popen:
    """The watchdog, outside the driver's process group (a Ctrl-C must not stop it first) and without
    the mark itself. The caller keeps the returned process; closing its stdin means "clean up now"."""
    env = {k: v for k, v in os.environ.items() if k != MARK_ENV}
    return subprocess.Popen([sys.executable, "-m", "pipeline.reaper", mark], stdin=subprocess.PIPE, env=env,
                            start_new_session=True)


def finish(watchdog: subprocess.Popen) -> None:
    """Normal end: close the pipe and wait for the watchdog's sweep, so nothing outlives the command."""
    watchdog.stdin.close()
    try:
        watchdog.wait(timeout=GRACE_S + 5)
    except subprocess.TimeoutExpired:
        watchdog.kill()


if __name__ == "__main__":
    sys.stdin.buffer.read()          # returns at EOF: the driver closed the pipe or died
    if Path("/proc/self/environ").exists():
        kill_marked(sys.argv[1])
