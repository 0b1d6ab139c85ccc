"""pipeline.foundation.reaper on its own, without Ray: a SIGKILLed driver's descendants die with it, also one that
carries no mark in its environment (as Ray's agents, whose setproctitle overwrites it), and nothing the
driver started before the watchdog is touched."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, alive

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the watchdog reads /proc (Linux)")

# The driver: one child started before the watchdog (must survive), then the watchdog, then a marked child and
# an unmarked one (both must die); prints the three pids and waits to be killed.
DRIVER = """
import os, subprocess, sys, time
from pipeline.foundation import reaper
before = subprocess.Popen(["sleep", "60"], start_new_session=True)
time.sleep(0.05)
watchdog = reaper.start("m1")
env = {k: v for k, v in os.environ.items() if k != reaper.MARK_ENV}
marked = subprocess.Popen(["sleep", "60"], env={**env, reaper.MARK_ENV: "m1"})
unmarked = subprocess.Popen(["sleep", "60"], env=env)
print(before.pid, marked.pid, unmarked.pid, flush=True)
time.sleep(60)
"""


def test_a_killed_drivers_new_processes_die_with_it_and_older_ones_do_not():
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    before, marked, unmarked = map(int, driver.stdout.readline().split())
    try:
        time.sleep(1.5)                    # the watchdog notes descendants once a second
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        deadline = time.time() + 10
        while (alive(marked) or alive(unmarked)) and time.time() < deadline:
            time.sleep(0.1)
        assert not alive(marked) and not alive(unmarked)
        assert alive(before)
    finally:
        for pid in (before, marked, unmarked):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
