"""The one search (pipeline.search): the exact index answers as brute force does (random and real
rows, ties by smaller id), the approximate one reaches recall@10 >= 0.95 at the nprobe it chose,
the index is cached (built once, up to date on rerun, rebuilt when damaged), its settings are part
of every answer's identity, and the answers record the index and its recall@10."""
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import planted_pairs, run_cli, synthetic_features  # noqa: F401
from pipeline import search
from pipeline.foundation import layout
from pipeline.search import query
from pipeline.look.pair_table import read_pairs

FULL = Path("/work/cache-full/features/cifar10-jpg-efficientnet_lite0_imagenet-224-bfloat16-e4c8a59a4f00.h5")


def brute(queries, base, k, exclude=None):
    """The brute force the index replaced: every cosine, most similar first, ties by smaller row."""
    s = search.unit_rows(queries) @ search.unit_rows(base).T
    if exclude is not None:
        s[np.arange(len(s)), exclude] = -np.inf
    order = np.lexsort((np.broadcast_to(np.arange(s.shape[1]), s.shape), -s), axis=1)[:, :k]
    return order, np.take_along_axis(s, order, axis=1)


def assert_same_answer(got, expected, tol=1e-5):
    """Same neighbours in the same order, except where two similarities lie within float32 rounding."""
    (gi, gs), (ei, es) = got, expected
    np.testing.assert_allclose(gs, es, atol=tol)
    clear = np.ones_like(es, bool)
    gaps = np.abs(np.diff(es, axis=1)) <= tol
    clear[:, 1:] &= ~gaps
    clear[:, :-1] &= ~gaps
    assert (gi[clear] == ei[clear]).all()
    assert clear.mean() > 0.9


def clustered(n, width=64, centres=200, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, width))
    return (c[rng.integers(0, centres, n)] + 0.7 * rng.normal(size=(n, width))).astype(np.float32)


def test_exact_index_equals_brute_force_on_random_rows(monkeypatch):
    # small blocks and chunks, so several blocks, similarity batches and query chunks are merged
    monkeypatch.setattr(query, "BLOCK", 300)
    monkeypatch.setattr(query, "SIMILARITIES", 20_000)
    monkeypatch.setattr(query, "QUERY_BYTES", 1)           # 64 queries a chunk
    rng = np.random.default_rng(1)
    base = rng.normal(size=(1000, 32)).astype(np.float32)
    base[500:510] = base[0]                      # exact ties: answered by smaller row
    base[700] = 0                                # an all-zero row stays zero, never NaN
    index = search.build(search.ArrayRows(base), search.Transform(), log=lambda *_: None)
    assert index.meta["kind"] == "flat"
    queries = np.concatenate([base[:150], rng.normal(size=(50, 32)).astype(np.float32)])
    assert_same_answer(search.top_k(index, queries, 12), brute(queries, base, 12))
    exclude = np.r_[np.arange(150), np.full(50, -1)]
    assert_same_answer(search.top_k(index, queries, 12, exclude), brute(queries, base, 12, exclude))
    qi, bi, sv, nearest = search.pairs_above(index, queries, 0.5)
    s = search.unit_rows(queries) @ search.unit_rows(base).T
    r, c = np.nonzero(s >= 0.5)
    assert (qi.tolist(), bi.tolist()) == (r.tolist(), c.tolist())
    np.testing.assert_allclose(sv, s[r, c], atol=1e-6)
    np.testing.assert_allclose(nearest, s.max(axis=1), atol=1e-6)
    assert search.recall(index, queries) is None         # exact: nothing to measure
    # a search of the index's first 600 rows (train of a train + val index) answers from them alone
    assert_same_answer(search.top_k(index, queries, 12, below=600), brute(queries, base[:600], 12))
    qi, bi, sv, nearest = search.pairs_above(index, queries, 0.5, below=600)
    assert (bi < 600).all() and len(bi) == int((s[:, :600] >= 0.5).sum())
    np.testing.assert_allclose(nearest, s[:, :600].max(axis=1), atol=1e-6)


def real_rows(planted):
    fs = planted[2]
    return fs.splits["train"].features, fs.splits["test"].features


def test_exact_index_equals_brute_force_on_real_rows(planted):
    base, queries = real_rows(planted)
    index = search.build(search.ArrayRows(base), search.Transform(), log=lambda *_: None)
    assert_same_answer(search.top_k(index, queries, 8), brute(queries, base, 8))


@pytest.mark.skipif(not FULL.is_file(), reason="the full CIFAR-10 features file is not here")
def test_exact_index_equals_brute_force_on_a_slice_of_all_of_cifar10():
    import h5py
    with h5py.File(FULL) as f:
        base, queries = f["train"]["features"][:4000], f["test"]["features"][:300]
    index = search.build(search.ArrayRows(base), search.Transform(), log=lambda *_: None)
    assert_same_answer(search.top_k(index, queries, 10), brute(queries, base, 10))


def test_approximate_index_reaches_its_recall_on_20k_rows():
    x = clustered(20_000)
    index = search.build(search.ArrayRows(x), search.Transform(), log=lambda *_: None, exact_rows=10_000)
    assert index.meta["kind"] == "ivf" and index.meta["nlist"] == 512       # min(4 sqrt(n), n / 39)
    assert index.meta["build_recall"]["recall"] >= 0.95
    measured = search.recall(index, x[:3000], exclude=np.arange(3000))
    assert measured["recall"] >= 0.95 and measured["nprobe"] < index.meta["nlist"]    # tuned on these queries
    # fewer lists probed: lower recall, so nprobe was needed
    assert search.recall(index, x[:3000], exclude=np.arange(3000), nprobe=1)["recall"] < measured["recall"]


@pytest.mark.slow
@pytest.mark.skipif(not FULL.is_file(), reason="the full CIFAR-10 features file is not here")
def test_approximate_index_recall_on_20k_real_rows():
    import h5py
    with h5py.File(FULL) as f:
        x, queries = f["train"]["features"][:20_000], f["test"]["features"][:1000]
    index = search.build(search.ArrayRows(x), search.Transform(), log=lambda *_: None, exact_rows=10_000)
    assert search.recall(index, queries)["recall"] >= 0.95


def test_index_is_cached_reused_and_rebuilt_when_damaged(tmp_path):
    path = synthetic_features(tmp_path, width=16)
    from pipeline.store import read_rows
    fs = read_rows(path)
    said = []
    first = search.cached_index(tmp_path, path, fs.attrs, search.parts(["train"]), log=said.append)
    folder = search.cache.folder(tmp_path, path, fs.attrs, search.parts(["train"]))
    assert folder.parent.name == layout.INDEXES_DIR and any("building" in s for s in said)
    stamp = (folder / layout.INDEX_ROWS).stat().st_mtime_ns
    said.clear()
    again = search.cached_index(tmp_path, path, fs.attrs, search.parts(["train"]), log=said.append)
    assert said == [f"search index up to date: {folder}"]
    assert (folder / layout.INDEX_ROWS).stat().st_mtime_ns == stamp
    q = fs.splits["test"].features
    np.testing.assert_array_equal(search.top_k(again, q, 5)[0], search.top_k(first, q, 5)[0])
    np.testing.assert_array_equal(search.top_k(again, q, 5)[0], brute(q, fs.splits["train"].features, 5)[0])
    with open(folder / layout.INDEX_ROWS, "r+b") as f:      # damaged: truncated
        f.truncate(100)
    said.clear()
    rebuilt = search.cached_index(tmp_path, path, fs.attrs, search.parts(["train"]), log=said.append)
    assert any(s.startswith(f"remaking {folder}: {layout.INDEX_ROWS} is 100 bytes") for s in said)
    np.testing.assert_array_equal(search.top_k(rebuilt, q, 5)[0], search.top_k(first, q, 5)[0])
    (folder / layout.INDEX_ROWS).write_bytes(b"\0" * (folder / layout.INDEX_ROWS).stat().st_size)   # same size
    said.clear()
    search.cached_index(tmp_path, path, fs.attrs, search.parts(["train"]), log=said.append)
    assert any("differs from what was written" in s for s in said)
    (folder / layout.INDEX_JSON).write_text("{")
    said.clear()
    search.cached_index(tmp_path, path, fs.attrs, search.parts(["train"]), log=said.append)
    assert any("not valid JSON" in s for s in said)


def test_index_settings_are_part_of_every_identity(tmp_path, monkeypatch, capsys):
    from pipeline.heads import training
    path = synthetic_features(tmp_path, width=16)
    from pipeline.store import read_rows
    fs = read_rows(path)
    before = (search.cache.folder(tmp_path, path, fs.attrs, [("train", "features")]),
              training.run_name("knn", "h", {"k": 5}), training.run_name("dense", "h", {"k": 5}))
    code, out, _ = run_cli(capsys, "neighbors", "--features", path, "--split", "test", "--row", 0,
                           "--cache-dir", tmp_path)
    first = sorted((tmp_path / layout.LOOKING_DIR).glob("neighbors-*.json"))
    monkeypatch.setitem(search.SETTINGS, "exact_rows", 50)
    after = (search.cache.folder(tmp_path, path, fs.attrs, [("train", "features")]),
             training.run_name("knn", "h", {"k": 5}), training.run_name("dense", "h", {"k": 5}))
    assert after[0] != before[0] and after[1] != before[1] and after[2] == before[2]
    code, out, _ = run_cli(capsys, "neighbors", "--features", path, "--split", "test", "--row", 0,
                           "--cache-dir", tmp_path)
    assert code == 0 and len(sorted((tmp_path / layout.LOOKING_DIR).glob("neighbors-*.json"))) == len(first) + 1
    new = [p for p in (tmp_path / layout.LOOKING_DIR).glob("neighbors-*.json") if p not in first][0]
    used = json.loads(new.read_text())["search_index"]
    assert used["kind"] == "ivf" and used["recall"]["queries"] == 1 and 0 <= used["recall_at_10"] <= 1
    old = json.loads(first[0].read_text())["search_index"]
    assert old["kind"] == "flat" and old["recall_at_10"] == 1.0 and old["recall"] is None


def test_knn_head_votes_as_scikit_learn_did(tmp_path):
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from pipeline.heads import kinds, knn
    from pipeline.store import read_rows
    path = synthetic_features(tmp_path, width=16, shuffle=True)        # overlapping classes: votes split
    fs = read_rows(path)
    for weighting in ("distance", "uniform"):
        model, _, metrics = knn.train_knn(fs, kinds.make_settings("knn", k=7, weighting=weighting), tmp_path)
        ref = Pipeline([("scale", StandardScaler()), ("knn", KNeighborsClassifier(
            7, weights=weighting, metric="cosine", algorithm="brute"))]).fit(fs.splits["train"].features,
                                                                         fs.splits["train"].labels)
        x = fs.splits["test"].features
        np.testing.assert_allclose(kinds.load_joblib(tmp_path / layout.MODEL_JOBLIB).predict_proba(x),
                                   ref.predict_proba(x), atol=1e-5)
        assert metrics["search"]["kind"] == "flat" and metrics["search"]["recall_at_10"] == 1.0


def test_audit_records_the_index_and_its_recall(planted, tmp_path, capsys, monkeypatch):
    path = planted[0]
    monkeypatch.setitem(search.SETTINGS, "exact_rows", 50)           # the planted train split: 80 rows
    code, out, err = run_cli(capsys, "audit", "--features", path, "--threshold", 0.95, "--no-exact",
                             "--cache-dir", tmp_path)
    assert code == 0, err
    answer = json.loads((Path(out[-1]) / layout.AUDIT_JSON).read_text())
    for split in ("test", "val"):
        used = answer["search_index"][split]
        assert used["kind"] == "ivf" and used["recall"]["k"] == 10 and used["recall_at_10"] >= 0.95
    found = {(p["source_index"], p["other_source_index"]) for p in read_pairs(Path(out[-1]))
             if p["other_split"] == "train"}
    assert planted_pairs(planted[2]) <= found       # the planted copies, still found through the lists


def test_knn_head_searches_the_cached_index_of_its_features_file(tmp_path, capsys):
    import shutil
    from pipeline.heads import kinds, training
    from pipeline.store import read_rows
    path = synthetic_features(tmp_path, width=16)
    fs = read_rows(path)
    first = training.run_head(fs, "knn", kinds.make_settings("knn", k=3), tmp_path, log=lambda *_: None)
    indexes = list((tmp_path / layout.INDEXES_DIR).iterdir())
    assert len([p for p in indexes if p.is_dir()]) == 1
    capsys.readouterr()
    other = training.run_head(fs, "knn", kinds.make_settings("knn", k=5), tmp_path, log=lambda *_: None)
    assert "search index up to date" in capsys.readouterr().err          # built once, for both runs
    assert other["run_dir"] != first["run_dir"]
    model_file = Path(first["run_dir"]) / layout.MODEL_JOBLIB
    assert model_file.stat().st_size < 20_000                            # the rows stay in the index
    x = fs.splits["test"].features
    expected = kinds.load_head(first["run_dir"]).predict_proba(x)
    shutil.rmtree(indexes[0] if indexes[0].is_dir() else indexes[1])     # gone: rebuilt on first use
    np.testing.assert_allclose(kinds.load_head(first["run_dir"]).predict_proba(x), expected)
