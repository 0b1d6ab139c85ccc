"""Heads on files larger than memory (issue 24): a split streamed as store.Rows is read a window at a
time, never whole; the streamed dense and logreg heads give the in-memory heads' results; the scale
benchmark's file is a features file every reader accepts. Streaming is forced on small files by
passing load_features a threshold of 0 bytes (head passes streamed_data.STREAM_ABOVE_BYTES)."""
import sys

import numpy as np
import pytest

from conftest import ROOT, synthetic_features
from pipeline import store
from pipeline.heads import streamed_data, streamed_logreg
from pipeline.heads.exclude import Exclusion
from pipeline.heads.training import run_head
from pipeline.store.features import load_features

sys.path.insert(0, str(ROOT / "benchmarks"))
FAST_DENSE = {"epochs": 6, "hidden": 32, "lr": 0.01, "min_epochs": 2, "patience": 2, "batch_size": 64}


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    # 1,000 train rows: eight chunks of 128 rows and a short last one; the classes stored in order
    return synthetic_features(tmp_path_factory.mktemp("scale"), width=16, per_class=(100, 20, 20))


def test_a_big_file_is_streamed_and_read_a_window_at_a_time(features, tmp_path, monkeypatch):
    monkeypatch.setattr(streamed_data, "BLOCK_ROWS", 256)
    fs = load_features(features, stream_above=0)
    assert all(isinstance(fs.splits[s].features, store.Rows) for s in store.SPLITS)
    assert isinstance(load_features(features, stream_above=10 ** 9).splits["train"].features, np.ndarray)
    run = run_head(fs, "dense", FAST_DENSE, tmp_path / "s")
    memory = run_head(load_features(features), "dense", FAST_DENSE, tmp_path / "m")
    assert run["metrics"]["streamed"] is True and "streamed" not in memory["metrics"]
    # the same head as the in-memory path trains (the epochs' batches differ, so within a tolerance)
    assert abs(run["metrics"]["test_accuracy"] - memory["metrics"]["test_accuracy"]) <= 0.03
    assert run["metrics"]["test_accuracy"] >= 0.95
    # no read ever asked for more than a block of train rows (the split has 1,000)
    assert 0 < fs.splits["train"].features.largest_read <= streamed_data.BLOCK_ROWS
    assert fs.splits["test"].features.largest_read <= streamed_data.PREDICT_ROWS


def test_an_epoch_holds_every_row_once_in_mixed_batches(features, monkeypatch):
    monkeypatch.setattr(streamed_data, "BLOCK_ROWS", 256)
    train = load_features(features, stream_above=0).splits["train"]
    data = streamed_data.batches(train, 64, seed=3)
    epochs = []
    for _ in range(2):
        batches = [data[i] for i in range(len(data))]
        data.on_epoch_end()
        epochs.append(batches)
    x = np.concatenate([b[0] for b in epochs[0]])
    stored = train.features[0:len(train.features)]
    assert len(data) == 16 and sorted(map(tuple, x)) == sorted(map(tuple, stored))
    # the file holds the classes in order (100 rows each); a batch still mixes several of them
    assert np.mean([len(np.unique(y)) for _, y in epochs[0]]) >= 3
    assert not np.array_equal(epochs[0][0][1], epochs[1][0][1])            # another order each epoch
    again = streamed_data.batches(train, 64, seed=3)
    assert np.array_equal(again[5][0], epochs[0][5][0])                    # a seeded function of the batch
    # Keras's feed: each pass over it is the next epoch, the same batches as the plan's
    feed = streamed_data.feed(train, 64, seed=3)
    fed = [list(feed), list(feed)]
    for passed, planned in zip(fed, epochs):
        assert len(passed) == len(planned)
        assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(passed, planned))


def test_streamed_moments_and_excluded_rows(features):
    fs = load_features(features, stream_above=0)
    train = load_features(features).splits["train"]
    mean, variance = streamed_data.moments(fs.splits["train"])
    np.testing.assert_allclose(mean, train.features.astype(np.float64).mean(axis=0), atol=1e-9)
    np.testing.assert_allclose(variance, train.features.astype(np.float64).var(axis=0), rtol=1e-9)
    cut = Exclusion(features, np.array([0, 5, 127, 128, 999]), 0)
    part = cut.apply(fs).splits["train"]
    assert len(part.features) == len(part.labels) == 995
    expected = cut.apply(load_features(features)).splits["train"]
    np.testing.assert_array_equal(part.features[120:300], expected.features[120:300])
    x = np.concatenate([b[0] for b in streamed_data.batches(part, 100, shuffle=False)])
    np.testing.assert_array_equal(x, expected.features)


@pytest.mark.slow
def test_streamed_logreg_is_the_in_memory_logreg(real_features, tmp_path):
    """On real features the streamed logreg (lbfgs on LogisticRegression's objective, a pass over
    the file per evaluation) is the in-memory one: the same optimum, the same predictions, shipped
    as the same scikit-learn Pipeline."""
    memory = run_head(load_features(real_features), "logreg", {}, tmp_path / "m")
    streamed = run_head(load_features(real_features, stream_above=0), "logreg", {}, tmp_path / "s")
    assert streamed["metrics"]["streamed"] is True and "streamed" not in memory["metrics"]
    assert streamed["metrics"]["converged"] and memory["metrics"]["converged"]
    a, b = memory["model"], streamed["model"]
    x = load_features(real_features).splits["test"].features
    assert np.mean(a.predict(x) == b.predict(x)) >= 0.99
    np.testing.assert_allclose(a.predict_proba(x), b.predict_proba(x), atol=0.05)
    assert abs(streamed["metrics"]["test_accuracy"] - memory["metrics"]["test_accuracy"]) <= 0.01


@pytest.mark.parametrize("classes", [2, 4])
def test_the_streamed_objective_is_logistic_regressions(classes):
    """Minimized over blocks of rows, the objective lands on LogisticRegression's coefficients: the
    multinomial model, and for two classes scikit-learn's binomial one (one row of coefficients);
    in whitened coordinates (W = V P) on the same ones."""
    from sklearn.linear_model import LogisticRegression
    rng = np.random.default_rng(classes)
    y = rng.integers(0, classes, 600)
    mix = rng.normal(0, 1, (8, 8))                               # correlated features: whitening has work to do
    x = ((rng.normal(0, 1, (classes, 8))[y] + rng.normal(0, 1.5, (600, 8))) @ mix).astype(np.float32)
    C = 0.05
    moments = x.astype(np.float64).mean(axis=0), x.astype(np.float64).var(axis=0)
    reference = LogisticRegression(C=C, tol=1e-8, max_iter=10_000).fit((x - moments[0]) / np.sqrt(moments[1]), y)
    for whiten in (None, streamed_logreg.preconditioner(x[:200], moments)):
        objective = streamed_logreg.Objective(lambda: ((x[lo:lo + 128], y[lo:lo + 128]) for lo in range(0, 600, 128)),
                                              classes, moments, 1 / (C * 600))
        params, iterations, converged = streamed_logreg.minimize(objective, 1000, whiten)
        coef, intercept = objective.unpack(params)
        assert converged and 0 < iterations < objective.passes
        assert coef.shape == reference.coef_.shape
        # stopped at a gradient under gtol 1e-4, against curvature of at least 1 / (C N) = 0.033: within 3e-3
        np.testing.assert_allclose(coef, reference.coef_, atol=5e-3)
        np.testing.assert_allclose(intercept, reference.intercept_, atol=5e-3)


def test_the_streamed_logreg_reaches_the_in_memory_optimum(features, monkeypatch):
    """Passes over a streamed file, a block at a time, end at LogisticRegression's optimum on the
    whole split, and the Pipeline ships as one affine layer."""
    from sklearn.linear_model import LogisticRegression
    from pipeline.heads.affine import AFFINE_TOLERANCE, keras_head
    monkeypatch.setattr(streamed_data, "BLOCK_ROWS", 256)
    fs = load_features(features, stream_above=0)
    model, metrics = streamed_logreg.train(fs, {"C": 0.1, "max_iter": 1000})
    assert metrics["streamed"] and metrics["converged"] and metrics["passes"] > metrics["iterations"] > 0
    assert fs.splits["train"].features.largest_read <= 256                     # a block, never the split
    train = load_features(features).splits["train"]
    scaled = model[0].transform(train.features)
    np.testing.assert_allclose(scaled.mean(axis=0), 0, atol=1e-5)               # the whole split's moments
    reference = LogisticRegression(C=0.1, tol=1e-8, max_iter=10_000).fit(scaled, train.labels)
    # lbfgs stops at a gradient under gtol 1e-4; the penalty's curvature 1 / (C N) = 0.01 leaves
    # the coefficients within ~1e-2 of the optimum
    np.testing.assert_allclose(model[-1].coef_, reference.coef_, atol=1e-2)
    x = fs.splits["test"].features[0:200]
    np.testing.assert_array_equal(model.predict(x), reference.predict(model[0].transform(x)))
    np.testing.assert_allclose(keras_head(model).predict(x, verbose=0), model.predict_proba(x), atol=AFFINE_TOLERANCE)
    few, metrics = streamed_logreg.train(fs, {"C": 0.1, "max_iter": 3})       # max_iter bounds the iterations
    assert few[-1].n_iter_[0] == metrics["iterations"] == 3 and not metrics["converged"]


def test_a_pass_in_order_reads_every_row_once_a_block_at_a_time(features):
    train = load_features(features, stream_above=0).splits["train"]
    blocks = list(streamed_data.in_order(train, 256))
    assert [len(b[1]) for b in blocks] == [256, 256, 256, 232]
    whole = load_features(features).splits["train"]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in blocks]), whole.features)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in blocks]), whole.labels)
    assert train.features.largest_read == 256


def test_the_scale_benchmarks_file_is_a_features_file(features, tmp_path):
    import bench_scale
    from pipeline.store.info import describe
    path = bench_scale.make_file(features, 2_300, tmp_path, log=lambda *a: None)
    fs = load_features(path)
    source = load_features(features)
    sizes = {s: len(fs.splits[s].labels) for s in store.SPLITS}
    assert sizes == {"train": 1642, "val": 329, "test": 329}
    train, src = fs.splits["train"], source.splits["train"]
    np.testing.assert_array_equal(train.features[:1000], src.features)            # the first pass exact
    np.testing.assert_array_equal(train.labels[1000:], src.labels[:642])           # copies keep their labels
    noise = train.features[1000:] - src.features[:642]
    assert 0 < np.abs(noise).max() < 0.1 * src.features.std()
    few = bench_scale.rows_of(1000, 300, seed=0)       # a smaller file: a sample spread over the source
    assert len(set(few)) == 300 and np.all(np.diff(few) > 0) and few[-1] > 900
    assert fs.attrs["data_fingerprint"] == source.attrs["data_fingerprint"]
    assert "1642" in describe(path).replace(",", "")
    assert bench_scale.make_file(features, 2_300, tmp_path, log=lambda *a: None) == path   # made once


def test_head_streams_a_file_over_the_switch(features, tmp_path, capsys, monkeypatch):
    import json
    from conftest import run_cli
    from pipeline.heads import head
    monkeypatch.setattr(head, "STREAM_ABOVE_BYTES", 0)          # the switch, lowered under this small file
    code, out, err = run_cli(capsys, "head", "--head", "logreg", "--max-iter", "3", "--features", features,
                             "--cache-dir", tmp_path)
    assert code == 0 and any(line.startswith("streaming ") for line in err), err
    run = json.loads(next((tmp_path / "heads").glob("logreg-*/run.json")).read_text())
    assert run["metrics"]["streamed"] is True and run["metrics"]["iterations"] == 3


def test_the_benchmark_reads_recall_from_a_searchs_own_json(tmp_path):
    import json
    import bench_scale
    assert bench_scale.recall_of(tmp_path, 0) is None                      # no search recorded one: null
    (tmp_path / "looking").mkdir()
    (tmp_path / "looking" / "neighbors-x.json").write_text(json.dumps({"index": {"kind": "flat", "recall@10": 0.97}}))
    assert bench_scale.recall_of(tmp_path, 0) == 0.97


def test_the_knn_head_on_a_streamed_file_is_the_in_memory_one(features, tmp_path):
    """The knn head never needs a streamed train split in memory (it searches the file's cached
    index), and gives the in-memory run's predictions, whole or with rows excluded (in memory)."""
    s = {"k": 5}
    streamed_fs = load_features(features, stream_above=0)
    streamed = run_head(streamed_fs, "knn", s, tmp_path / "s")
    memory = run_head(load_features(features), "knn", s, tmp_path / "m")
    assert streamed["metrics"]["test_accuracy"] == memory["metrics"]["test_accuracy"]
    assert streamed_fs.splits["train"].features.largest_read == 0          # train came from the index
    x = load_features(features).splits["test"].features
    np.testing.assert_array_equal(streamed["model"].predict(x), memory["model"].predict(x))
    cut = Exclusion(features, np.arange(0, 1000, 7), 0)
    parts = [run_head(fs, "knn", s, tmp_path / name, exclude=cut)["model"].predict(x)
             for name, fs in (("se", load_features(features, stream_above=0)), ("me", load_features(features)))]
    np.testing.assert_array_equal(*parts)


def test_the_scale_benchmark_keeps_what_an_earlier_run_measured(tmp_path):
    import json
    import bench_scale
    final, file = tmp_path / "scale-10.json", tmp_path / "scale-10-abc.h5"
    env = {"date": "2026-12-07T18:22:46+00:00", "commit": "3d2e02e", "load_average": [1.7, 1.6, 2.2]}
    final.write_text(json.dumps({"file": str(file), "environment": env,
                                 "commands": {"audit": {"wall_seconds": 69.0}}}))
    kept = bench_scale.earlier_commands(final, file)
    assert kept == {"audit": {"wall_seconds": 69.0, "measured": env}}
    assert bench_scale.earlier_commands(final, tmp_path / "another.h5") == {}     # another file: nothing kept
    assert bench_scale.earlier_commands(tmp_path / "none.json", file) == {}
    record = {"search_index": {"recall_at_10": 0.97, "build_recall": {"recall": 0.95, "k": 10}}}
    assert bench_scale._find(record, "recall_at_10") == 0.97 and bench_scale._find(record, "build_recall") == 0.95
