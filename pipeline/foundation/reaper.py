"""Stops every process of a local Ray instance once the command that started it has ended, however it ended.

`ray.shutdown()` covers a normal exit and Ctrl-C, but after a SIGKILLed driver Ray's DashboardAgent and
RuntimeEnvAgent wait out the GCS reconnect timeout and live on for ~65 s (measured, Ray 2.60), and an
actor its raylet has not reaped yet lives on too. So the driver starts this watchdog, in its own session,
on a pipe, before it starts Ray. Every second the watchdog notes the processes below the driver that
started after it did (Ray's: GCS, raylet, the agents, the workers); when the pipe closes (the driver
exited, or died) it kills those still running, and any process whose environment carries the
instance's mark (inherited by workers Ray starts in the last second; the agents rename themselves with
setproctitle, which overwrites the environment /proc shows, hence the process tree as well).
Linux only (it reads /proc); elsewhere it does nothing.

    python -m pipeline.foundation.reaper MARK DRIVER_PID        # stdin: the driver's end of the pipe
"""
from __future__ import annotations

import os
import select
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


def _stats() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, start time in clock ticks since boot) of every process."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            out[int(stat.parent.name)] = (int(fields[1]), int(fields[19]))
        except (OSError, ValueError, IndexError):
            pass          # gone already
    return out


def descendants(root: int, since: int) -> dict[int, int]:
    """pid -> start time of the processes below `root` that started at or after `since`."""
    stats = _stats()
    children = {}
    for pid, (parent, _) in stats.items():
        children.setdefault(parent, []).append(pid)
    found, todo = {}, [root]
    while todo:
        for pid in children.get(todo.pop(), ()):
            if stats[pid][1] >= since and pid != os.getpid():
                found[pid] = stats[pid][1]
            todo.append(pid)
    return found


def kill(noted: dict[int, int], mark: str) -> None:
    """Kill the noted processes still running (same pid *and* start time: not a recycled pid), then
    every marked one until none is left (a dying raylet can still be starting a worker), for at most
    GRACE_S."""
    stats = _stats()
    for pid, started in noted.items():
        if stats.get(pid, (0, None))[1] == started:
            _kill(pid)
    deadline = time.monotonic() + GRACE_S
    while (pids := marked(mark)) and time.monotonic() < deadline:
        for pid in pids:
            _kill(pid)
        time.sleep(0.2)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def watch(mark: str, driver: int) -> None:
    """Note the driver's new descendants every second until the pipe on stdin closes, then kill."""
    since = _stats().get(os.getpid(), (0, 0))[1]
    noted = {}
    while True:
        noted.update(descendants(driver, since))
        ready, _, _ = select.select([0], [], [], 1.0)
        if ready and not os.read(0, 4096):
            break
    kill(noted, mark)


def start(mark: str) -> subprocess.Popen:
    """The watchdog, outside the driver's process group (a Ctrl-C must not stop it first) and without
    the mark itself. The caller keeps the returned process; closing its stdin means "clean up now"."""
    env = {k: v for k, v in os.environ.items() if k != MARK_ENV}
    return subprocess.Popen([sys.executable, "-m", __name__, mark, str(os.getpid())], stdin=subprocess.PIPE,
                            env=env, start_new_session=True)


def finish(watchdog: subprocess.Popen) -> None:
    """Normal end: close the pipe and wait for the watchdog's sweep, so nothing outlives the command."""
    watchdog.stdin.close()
    try:
        watchdog.wait(timeout=GRACE_S + 5)
    except subprocess.TimeoutExpired:
        watchdog.kill()


if __name__ == "__main__":
    if Path("/proc/self/stat").exists():
        watch(sys.argv[1], int(sys.argv[2]))
    else:
        sys.stdin.buffer.read()      # nothing to look at: just end with the driver
