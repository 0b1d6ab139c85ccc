"""A `head` run in one pass: it reads its features file once (the report page included), calibrates
once, writes each output once, and prints the report it made without reading it back (issue 25)."""
from __future__ import annotations

import collections
from pathlib import Path

import h5py

from conftest import run_cli, synthetic_features
from pipeline.foundation import records
from pipeline.heads import calibration


def _count(monkeypatch, module, name, counter):
    original = getattr(module, name)

    def counted(*args, **kwargs):
        counter[name] += 1
        return original(*args, **kwargs)
    monkeypatch.setattr(module, name, counted)


def test_a_head_run_reads_calibrates_and_writes_once(tmp_path, monkeypatch, capsys):
    features = synthetic_features(tmp_path)
    opened, calls, written, read_back = collections.Counter(), collections.Counter(), collections.Counter(), []

    original_open = h5py.File.__init__

    def opening(self, name, *args, **kwargs):
        if isinstance(name, (str, Path)):
            opened[Path(name).resolve()] += 1
        return original_open(self, name, *args, **kwargs)
    monkeypatch.setattr(h5py.File, "__init__", opening)
    for name in ("assess", "fit_temperature", "reliability", "plot_reliability"):
        _count(monkeypatch, calibration, name, calls)
    original_write = Path.write_text

    def writing(self, *args, **kwargs):
        written[self.name] += 1
        return original_write(self, *args, **kwargs)
    monkeypatch.setattr(Path, "write_text", writing)
    original_read = records.read

    def reading(path, kind, *args, **kwargs):
        if kind is records.REPORT:
            read_back.append(path)
        return original_read(path, kind, *args, **kwargs)
    monkeypatch.setattr(records, "read", reading)

    code, out, _ = run_cli(capsys, "head", "--features", str(features), "--cache-dir", str(tmp_path), "--epochs", "3")
    assert code == 0 and out[-1].startswith("all runs:")     # the report page was rebuilt too
    assert opened[features.resolve()] == 1
    # one assessment: T fitted once, each split's reliability curve once before and once after scaling
    assert calls == {"assess": 1, "fit_temperature": 1, "reliability": 4, "plot_reliability": 1}
    assert written and max(written.values()) == 1, written
    assert len(read_back) == 1           # by the report page only: the run prints the report it made
