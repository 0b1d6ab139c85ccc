"""Stage one on Ray: the same file as the local engine, fake GPUs handed out one per actor, a crashed
actor's shard retried (and a shard that always crashes named), GPUs the cluster lacks refused at once,
and a killed or interrupted driver resuming with no Ray process left behind.

One local Ray instance (2 CPUs, 2 fake GPUs) serves the in-process tests; the subprocess test starts
its own instances through the command, under a private temp dir by which it finds (and kills) any
process they leave."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import (ROOT, assert_one_error, done_rows, random_size_tree, read_features_file, run_cli, spawn_cli,
                      synthetic_cifar, synthetic_features, write_batches)
from pipeline import store
from pipeline.cli import main
from pipeline.extract.engine import CRASH_ENV, PAUSE_ENV
from pipeline.foundation.progress import INTERVAL_ENV

ray = pytest.importorskip("ray")


def ray_pids(marker: str) -> list[int]:
    """Processes whose command line or environment (RAY_TMPDIR, inherited by every process of the
    instance, also by agents that rename themselves `ray::DashboardAgent`) names this test's private
    Ray temp dir."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if any(marker.encode() in (entry / name).read_bytes() for name in ("cmdline", "environ")):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def kill_all(marker: str):
    for pid in ray_pids(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_gone(marker: str, seconds: float = 20) -> list[str]:
    """What is still running after `seconds`, as 'pid: command line'."""
    deadline = time.time() + seconds
    while ray_pids(marker) and time.time() < deadline:
        time.sleep(0.5)
    left = []
    for pid in ray_pids(marker):
        try:
            left.append(f"{pid}: {Path(f'/proc/{pid}/cmdline').read_bytes()[:100].replace(bytes(1), b' ').decode()}")
        except OSError:
            pass
    return left


@pytest.fixture(scope="module")
def ray_instance():
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")     # short: Ray's socket paths must fit 107 bytes
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, object_store_memory=100 * 2**20,
             _temp_dir=temp, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()
    kill_all(temp)
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, tiny_backbone):
    """A mixed-size image folder (4 shards of 128 rows) and its features from the local engine."""
    root = random_size_tree(tmp_path_factory.mktemp("ray-data") / "mixed")
    args = ["features", "--data", str(root), "--backbone", str(tiny_backbone), "--precision", "float32",
            "--batch-size", "16", "--shard-rows", "128"]
    cache = tmp_path_factory.mktemp("ray-local")
    assert main([*args, "--cache-dir", str(cache)]) == 0
    return args, next((cache / "features").glob("*.h5"))


def assert_same_file(a_path, b_path):
    a, a_attrs = read_features_file(a_path)
    b, b_attrs = read_features_file(b_path)
    for key in ("data_fingerprint", "settings_hash", "image_shape", "class_names"):
        assert str(a_attrs[key]) == str(b_attrs[key]), key
    for split in store.SPLITS:
        for name in ("labels", "index"):
            np.testing.assert_array_equal(a[split][name], b[split][name])
        # Same batches, but a worker computes with its share of the cores (1 thread, not 2), which
        # can change float32 sums in the last bits: 5 of 4,032 numbers differed, by 1.5e-7 relative.
        np.testing.assert_allclose(a[split]["features"], b[split]["features"], rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_ray_equals_local_and_gives_each_worker_its_own_gpu(ray_instance, mixed, tmp_path, capsys):
    args, local = mixed
    capsys.readouterr()
    assert main([*args, "--cache-dir", str(tmp_path), "--engine", "ray", "--workers", "2",
                 "--gpus-per-worker", "1"]) == 0
    path = Path(capsys.readouterr().out.splitlines()[-1])
    assert path.name == local.name
    assert_same_file(local, path)
    with h5py.File(path) as f:
        assert f.attrs["engine"] == "ray" and f.attrs["workers"] == 2 and f.attrs["shards"] == 4
        assert sorted(f.attrs["worker_devices"]) == ["0", "1"]      # Ray's CUDA_VISIBLE_DEVICES per actor


@pytest.mark.slow
def test_a_crashed_worker_is_replaced_and_its_shard_retried(ray_instance, mixed, tmp_path, capsys, monkeypatch):
    args, local = mixed
    marker = tmp_path / "crashed-once"
    monkeypatch.setenv(CRASH_ENV, f"test:128:once={marker}")
    capsys.readouterr()
    assert main([*args, "--cache-dir", str(tmp_path), "--engine", "ray", "--gpus-per-worker", "1"]) == 0
    assert marker.exists()
    assert_same_file(local, Path(capsys.readouterr().out.splitlines()[-1]))


@pytest.mark.slow
def test_a_shard_that_always_crashes_ends_with_an_error_naming_it(ray_instance, mixed, tmp_path, capsys, monkeypatch):
    args, _ = mixed
    monkeypatch.setenv(CRASH_ENV, "test:128")
    capsys.readouterr()
    assert main([*args, "--cache-dir", str(tmp_path), "--engine", "ray", "--gpus-per-worker", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: shard test[128:140] failed 3 times")
    assert not list(tmp_path.rglob("*.h5")) and len(list(tmp_path.rglob("*.h5.partial"))) == 1


@pytest.mark.slow      # the only fast user of a local Ray instance and of `mixed`: ~7 s of CPU, 15 s of wall
def test_gpus_the_cluster_lacks_fail_at_once(ray_instance, mixed, tmp_path, capsys):
    args, _ = mixed
    assert main([*args, "--cache-dir", str(tmp_path), "--engine", "ray", "--gpus-per-worker", "3"]) == 2
    assert "needs 6 GPUs, at least 3 on one node; the Ray cluster has 2" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.partial"))         # checked before the partial file is created


@pytest.mark.slow
def test_killed_or_interrupted_driver_resumes_and_leaves_no_ray_process(tmp_path):
    """Stopped at a known row (the driver pauses there, PAUSE_ENV, and says so), whatever the
    machine's speed: SIGKILL and then Ctrl-C write no row after it (issue 22.14: the interrupt raced
    the last shards, and on a busy machine lost), leave no Ray process, and the rerun resumes."""
    data = write_batches(tmp_path / "batches", *synthetic_cifar(1000, 100))
    args = [sys.executable, "-m", "pipeline", "features", "--data", str(data), "--weights", "none", "--size", "75",
            "--precision", "float32", "--batch-size", "32", "--shard-rows", "128"]
    reference = subprocess.run([*args, "--cache-dir", str(tmp_path / "ref")], cwd=ROOT, capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr
    ref_path = Path(reference.stdout.splitlines()[-1])

    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": temp, "TF_CPP_MIN_LOG_LEVEL": "3"}
    cache = tmp_path / "run"
    final = cache / "features" / ref_path.name
    partial = store.partial_path(final)
    ray_args = [*args, "--cache-dir", str(cache), "--engine", "ray", "--workers", "2"]
    try:
        no_gpu = subprocess.run([*ray_args, "--gpus-per-worker", "1"], cwd=ROOT, env=env, capture_output=True, text=True)
        assert no_gpu.returncode == 2 and "the Ray cluster has 0" in no_gpu.stderr
        assert wait_gone(temp) == []

        for stop, after_rows in ((signal.SIGKILL, 256), (signal.SIGINT, 256)):
            before = done_rows(partial) if partial.exists() else 0
            driver = subprocess.Popen(ray_args, cwd=ROOT, env={**env, PAUSE_ENV: str(after_rows)},
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            said = []
            for line in driver.stderr:            # blocks until the driver pauses (or ends)
                said.append(line)
                if line.startswith("paused after "):
                    break
            assert said and said[-1].startswith("paused after "), "".join(said)
            paused_at = int(said[-1].split()[2])
            driver.send_signal(stop)
            out, err = driver.communicate(timeout=300)
            assert not final.exists() and done_rows(partial) == before + paused_at < 1100, err
            if stop == signal.SIGINT:
                assert driver.returncode == 130 and "interrupted" in err
            assert wait_gone(temp) == [], f"Ray processes outlived a driver stopped by {stop!r}"

        resumed = subprocess.run(ray_args, cwd=ROOT, env=env, capture_output=True, text=True)
        assert resumed.returncode == 0, resumed.stderr
        done_before = [line for line in resumed.stdout.splitlines() if "shards already done" in line]
        assert done_before and not done_before[0].startswith("0 of")
        assert wait_gone(temp) == []
        assert_same_file(ref_path, final)
    finally:
        kill_all(temp)
        shutil.rmtree(temp, ignore_errors=True)


def test_ctrl_c_while_ray_holds_the_interrupt_back_writes_no_further_shard(monkeypatch):
    """The driver's SIGINT handler: even when Ray swallows the KeyboardInterrupt, the next shard
    that arrives is not written (unit test of ray_engine._interruptible, no Ray started)."""
    from pipeline.extract import ray_engine
    before = signal.getsignal(signal.SIGINT)
    with ray_engine._interruptible() as interrupted:
        assert not interrupted.is_set()
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        assert interrupted.is_set()
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.slow
def test_sweep_on_ray_shares_the_features_and_ranks_like_local(ray_instance, tmp_path, capsys):
    features = synthetic_features(tmp_path, width=16, per_class=(30, 20, 20))
    boards = {}
    for engine in ("local", "ray"):
        cache = tmp_path / engine
        capsys.readouterr()
        assert main(["sweep", "--features", str(features), "--cache-dir", str(cache), "--head", "logreg",
                     "--jobs", "2", "--engine", engine, "--grid", "C=0.01,1"]) == 0
        assert "0 already done, 2 to train" in capsys.readouterr().out
        board = json.loads(next((cache / "sweeps").glob("*.json")).read_text())
        boards[engine] = [(r["run"], r["C"], r["val_accuracy"], r["test_accuracy"]) for r in board]
    assert boards["ray"] == boards["local"]


@pytest.mark.slow
def test_an_unreadable_image_gives_the_local_engines_error(ray_instance, tiny_backbone, tmp_path, capsys,
                                                          monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "600")               # no progress line: the error is the only one
    root = random_size_tree(tmp_path / "data", n_per_class=4)
    empty = root / "test" / "bee" / "002.png"
    empty.write_bytes(b"")                                # a 0-byte image file
    args = ["features", "--data", root, "--backbone", tiny_backbone, "--precision", "float32"]
    errors = {}
    for engine in (["local"], ["ray", "--workers", "1"]):      # one actor: the test's cost is its start-up
        code, _, err = run_cli(capsys, *args, "--cache-dir", tmp_path / engine[0], "--engine", *engine)
        assert_one_error(code, err, f"cannot read image {empty}: ")
        errors[engine[0]] = err
    assert errors["ray"] == errors["local"] and "np.str_" not in errors["local"][0]


@pytest.mark.parametrize("address, message", [("127.0.0.1:{free}", "Connection refused"),
                                              ("nonsense", "Invalid address format")])
def test_an_address_where_no_cluster_answers_fails_in_seconds(address, message):
    from pipeline.foundation.errors import UserError
    from pipeline.extract.ray_address import CONNECT_SECONDS, check_reachable
    with socket.socket() as s:                  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert CONNECT_SECONDS < 10          # the longest any probe waits (no wall-clock bound: the machine may be busy)
    with pytest.raises(UserError, match=f"cannot join the Ray cluster at {address.format(free=free)}: .*{message}"):
        check_reachable(address.format(free=free))


def test_features_with_an_address_nothing_listens_on_gives_one_error_line(tmp_path):
    data = write_batches(tmp_path / "batches", *synthetic_cifar(20, 10))
    started = time.monotonic()
    proc = spawn_cli("features", "--data", data, "--weights", "none", "--size", "75", "--cache-dir", tmp_path,
                     "--engine", "ray", "--address", "127.0.0.1:1")
    _, err = proc.communicate(timeout=120)         # it retried for ever before
    assert_one_error(proc.returncode, err.strip().splitlines(), "cannot join the Ray cluster at 127.0.0.1:1: ")
    assert time.monotonic() - started < 30          # checked first: 3 s here, TensorFlow not even loaded


@pytest.mark.parametrize("address, message", [
    ("ray://127.0.0.1:{free}", "Connection refused"),
    ("ray://localhost:99999", "is not a host:port with a port 1-65535"),
    ("ray://256.1.1.1:10001", "cannot join the Ray cluster"),
    ("{silent}", "nothing answered as a Ray cluster within"),
    ("ray://{silent}", "nothing answered as a Ray cluster within"),
])
def test_no_address_waits_longer_than_ten_seconds(address, message):
    """Issue 22.7: Ray Client addresses and hosts that accept connections but are no Ray cluster (a
    proxy, a silent port) took 27-43 s before their error. The bound is the probe's own timeout."""
    import contextlib
    import threading
    from pipeline.foundation.errors import UserError
    from pipeline.extract.ray_address import CONNECT_SECONDS, check_reachable
    assert CONNECT_SECONDS < 10
    with socket.socket() as s, socket.socket() as silent:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
        silent.bind(("0.0.0.0", 0))          # accepts every connection and never says a word
        silent.listen(8)
        accepted = []

        def accept():
            with contextlib.suppress(OSError):          # the socket closes at the end of the test
                while True:
                    accepted.append(silent.accept())
        threading.Thread(target=accept, daemon=True).start()
        with pytest.raises(UserError, match=message):
            check_reachable(address.format(free=free, silent=f"127.0.0.1:{silent.getsockname()[1]}"))
        for conn, _ in accepted:
            conn.close()
