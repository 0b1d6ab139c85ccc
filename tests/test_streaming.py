"""Stage one streams: bounded batches whatever the image count, image folders of mixed sizes, the
same rows and fingerprint for any shard or batch layout, and progress lines in a log."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, random_size_tree, read_features_file
from pipeline.sources import dataset, digest, partition, rows
from pipeline import store
from pipeline.cli import main
from pipeline.foundation.progress import INTERVAL_ENV

CLASSES = ("ant", "bee")

def test_mixed_sizes_any_shard_layout_and_progress_lines(tmp_path, tiny_backbone, capsys, monkeypatch):
    from pipeline.backbones.build import build_backbone
    root = random_size_tree(tmp_path / "mixed")
    monkeypatch.setenv(INTERVAL_ENV, "0")                 # a line after every batch
    base = ["features", "--data", str(root), "--backbone", str(tiny_backbone), "--precision", "float32"]
    assert main([*base, "--cache-dir", str(tmp_path / "a"), "--batch-size", "16", "--shard-rows", "128"]) == 0
    out, err = capsys.readouterr()
    a_path = Path(out.splitlines()[-1])
    lines = [line for line in err.splitlines() if line.startswith("features: ")]
    assert len(lines) >= 10 and "images/s, ETA" in lines[0] and lines[-1].startswith("features: 280/280 rows (100%)")
    assert main([*base, "--cache-dir", str(tmp_path / "b"), "--batch-size", "50"]) == 0
    b_path = Path(capsys.readouterr().out.splitlines()[-1])
    a, a_attrs = read_features_file(a_path)
    b, b_attrs = read_features_file(b_path)
    assert a_attrs["data_fingerprint"] == b_attrs["data_fingerprint"] and a_attrs["settings_hash"] == b_attrs["settings_hash"]
    assert (a_attrs["shards"], b_attrs["shards"]) == (4, 3)  # train 126 rows, val 14, test 140 in blocks of 128

    # the files differ in size; stage one decoded each at the file's image_shape (here the network's 32x32)
    assert len({Image.open(p).size for p in root.glob("*/*/*.png")}) > 10 and list(a_attrs["image_shape"]) == [32, 32, 3]
    splits = partition.make_splits(dataset.load_dataset(root, decoding=rows.decoding_of(a_attrs)), 0.1, 0)
    assert digest.fingerprint(splits) == a_attrs["data_fingerprint"]
    alone = build_backbone(str(tiny_backbone), None, None, (None, None, 3)).model
    for name in store.SPLITS:
        np.testing.assert_array_equal(a[name]["labels"], b[name]["labels"])
        np.testing.assert_array_equal(a[name]["index"], splits[name].index)
        np.testing.assert_allclose(a[name]["features"], b[name]["features"], rtol=1e-5, atol=1e-6)
        images = splits[name].read()
        expected = np.concatenate([alone.predict(img[None], verbose=0) for img in images[:5]])
        np.testing.assert_allclose(a[name]["features"][:5], expected, rtol=1e-4, atol=1e-5)


def smooth_photos(root: Path, n_distinct: int, copies: int, side: int = 300) -> Path:
    """Two classes of `side`x`side` JPEGs (smooth, so small on disk); copies are hard links."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    for split in ("train", "test"):
        for c in CLASSES:
            (root / split / c).mkdir(parents=True)
    for i in range(n_distinct):
        tint = rng.integers(0, 256, 3)
        img = (ramp[:, None, None] * 0.5 + ramp[None, :, None] * 0.3 + tint * 0.2).astype(np.uint8)
        first = root / "train" / CLASSES[i % 2] / f"{i:05d}-0.jpg"
        Image.fromarray(img).save(first, quality=80)
        for k in range(1, copies):
            os.link(first, first.with_name(f"{i:05d}-{k}.jpg"))
    for c in CLASSES:                                       # a small test split
        for f in sorted((root / "train" / c).iterdir())[:10]:
            os.link(f, root / "test" / c / f.name)
    return root


def peak_rss_mb(cmd) -> float:
    """Run a command to its end; its maximum resident memory (the kernel's count, not a timing)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, err.decode()[-2000:]
    return usage.ru_maxrss / 1024


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_image_count(tmp_path, tiny_backbone):
    peaks = {}
    for n in (600, 6000):
        root = smooth_photos(tmp_path / f"photos{n}", 600, n // 600)
        peaks[n] = peak_rss_mb([sys.executable, "-m", "pipeline", "features", "--data", str(root), "--backbone",
                                str(tiny_backbone), "--precision", "float32", "--cache-dir", str(tmp_path / f"c{n}")])
    # 5,400 more images of 300x300x3 would be 1,458 MB decoded at once; streamed, only labels,
    # indices and file names grow.
    assert abs(peaks[6000] - peaks[600]) < 100, peaks
