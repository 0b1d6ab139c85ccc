"""pipeline.foundation.progress wherever a long pass runs: plain lines in a log (stderr not a terminal) for stage
one, the fine-tune activation pass and predict; never past 100%; a short run stays quiet."""
import re

import numpy as np

from pipeline import store
from pipeline.finetune import activations
from pipeline.foundation.progress import INTERVAL_ENV, Progress
from pipeline.sources.images import ArrayImages, Split


def counts(text: str, desc: str) -> list[tuple[int, int]]:
    return [tuple(int(v.replace(",", "")) for v in m) for m in re.findall(rf"{desc}: ([\d,]+)/([\d,]+) rows", text)]


def test_a_short_run_prints_nothing_and_a_reported_one_ends_with_its_final_state(capsys):
    with Progress(10, desc="quiet", interval=3600) as bar:
        bar.update(10)
    with Progress(10, 4, desc="busy", interval=0) as bar:
        bar.update(3)
        bar.update(3)
    err = capsys.readouterr().err
    assert "quiet" not in err
    assert counts(err, "busy") == [(7, 10), (10, 10), (10, 10)]
    assert "0.0 images/s, ETA ?" in err.splitlines()[0]      # one batch in: no rate yet (it read 700,000/s)


def test_the_activation_pass_prints_plain_lines_in_a_log(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "0")
    rng = np.random.default_rng(0)
    splits = {name: Split(np.arange(n) % 2, np.arange(n), ArrayImages(rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)))
              for name, n in zip(store.SPLITS, (12, 4, 4))}
    s = {"kind": "cut activations", "cut": "test", "views_per_image": 1, "precision": "float32"}
    activations.build(tmp_path / "a.h5", s, splits, lambda x: x.reshape(len(x), -1)[:, :6].astype(np.float32) / 255,
                      batch_size=4, log=lambda *a: None)
    err = capsys.readouterr().err
    assert counts(err, r"cache train")[-1] == (12, 12) and counts(err, r"cache  test")[-1] == (4, 4)
