"""`python -m pipeline compare A B`: two runs on the same images, image by image; runs on different
images refused; the sweep's ties; the fine-tune's statement against its head."""
import json
import shutil

import numpy as np
import pytest

from conftest import assert_one_error, run_cli, synthetic_cifar, synthetic_features, write_batches
from pipeline.look import compare
from pipeline.heads import kinds, training
from pipeline.heads import mistakes
from pipeline.foundation import stats
from pipeline.foundation.runs import Run
from pipeline.heads import leaderboard
from pipeline.cli import main
from pipeline.store.features import load_features


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """A logreg and a knn head on shuffled-label synthetic features (near chance: many images only
    one of them gets right), whose source is a synthetic CIFAR batches folder (the gallery reads it)."""
    tmp = tmp_path_factory.mktemp("compare")
    source = write_batches(tmp / "batches", *synthetic_cifar(n_train=300, n_test=30))
    # the split settings stage one records: the head reports check the source with them (against
    # the fingerprint "synthetic": refused, so those reports carry notes; compare's gallery is its own)
    path = synthetic_features(tmp, per_class=(20, 10, 3), shuffle=True, source=str(source),
                              image_shape=[32, 32, 3], limit=-1, val_fraction=0.25, split_seed=0)
    fs, cache = load_features(path), tmp / "cache"
    a = training.run_head(fs, "logreg", kinds.make_settings("logreg"), cache)
    b = training.run_head(fs, "knn", kinds.make_settings("knn", k=3), cache)
    return cache, a["run_dir"], b["run_dir"]


def _right(run_dir, split):
    rows = mistakes.read_predictions(compare.load(run_dir, "unused").report_dir / "predictions.csv")
    return np.array([r["correct"] for r in sorted(rows, key=lambda r: r["source_index"]) if r["split"] == split], bool)


def test_compare_states_the_paired_difference_and_swaps_cleanly(two_runs, capsys):
    cache, a, b = two_runs
    assert main(["compare", a, b, "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "McNemar" in out and "Wilson" in out and "bootstrap" in out
    saved = json.loads(next((cache / "compare").glob("*/compare.json")).read_text())
    ra, rb = _right(a, "test"), _right(b, "test")
    only_a, only_b = int(np.sum(ra & ~rb)), int(np.sum(rb & ~ra))
    t = saved["splits"]["test"]
    assert (t["only_a"], t["only_b"]) == (only_a, only_b) and only_a + only_b > 0
    assert t["difference"] == pytest.approx(rb.mean() - ra.mean())
    assert t["mcnemar_p"] == pytest.approx(stats.mcnemar_exact(only_a, only_b))
    assert t["a"]["accuracy"] == pytest.approx(ra.mean()) and t["a"]["low"] < ra.mean() < t["a"]["high"]
    assert saved["gallery"]["file"] == "disagreements.png"
    shown = saved["gallery"]["source_index"]
    assert len(shown["A"]) == min(only_a, compare.SHOWN) and len(shown["B"]) == min(only_b, compare.SHOWN)

    assert main(["compare", b, a, "--cache-dir", str(cache)]) == 0
    capsys.readouterr()
    swapped = [json.loads(p.read_text()) for p in (cache / "compare").glob("*/compare.json")]
    back = next(s for s in swapped if s["a"]["name"] != saved["a"]["name"])["splits"]["test"]
    assert back["difference"] == pytest.approx(-t["difference"])
    assert (back["difference_low"], back["difference_high"]) == pytest.approx((-t["difference_high"], -t["difference_low"]))
    assert back["mcnemar_p"] == t["mcnemar_p"] and (back["only_a"], back["only_b"]) == (only_b, only_a)

    assert main(["compare", a, b, "--cache-dir", str(cache)]) == 0     # by folder: up to date
    assert "up to date" in capsys.readouterr().out


def test_a_second_identical_comparison_is_refused(two_runs, tmp_path, capsys):
    """One lock per comparison (outputs.produce): the second writer is refused, nothing is written."""
    from pipeline.foundation import outputs
    _, a, b = two_runs
    cache = tmp_path / "cache"
    assert main(["compare", a, b, "--cache-dir", str(cache)]) == 0
    capsys.readouterr()
    out = next((cache / "compare").iterdir())
    shutil.rmtree(out)
    with outputs.Lock(out):
        code, _, err = run_cli(capsys, "compare", a, b, "--cache-dir", cache)
    assert_one_error(code, err, "another run is writing")
    assert not out.exists()


@pytest.mark.parametrize("damage", ["truncated", "[1, 2]", "no splits", "NaN difference"])
def test_a_damaged_cached_comparison_is_one_error_line(two_runs, tmp_path, capsys, damage):
    """As the other cached answers (neighbours, audit): read through pipeline.records, not trusted."""
    _, a, b = two_runs
    cache = tmp_path / "cache"
    assert main(["compare", a, b, "--cache-dir", str(cache)]) == 0
    path = next((cache / "compare").glob("*/compare.json"))
    saved = json.loads(path.read_text())
    if damage == "no splits":
        del saved["splits"]
    elif damage == "NaN difference":
        saved["splits"]["test"]["difference"] = float("nan")
    text = {"truncated": path.read_text()[:40], "[1, 2]": "[1, 2]"}.get(damage, json.dumps(saved))
    path.write_text(text)
    code, _, err = run_cli(capsys, "compare", a, b, "--cache-dir", cache)
    assert_one_error(code, err, f"{path} is damaged")
    assert "delete the folder" in err[0]


def test_runs_are_named_by_name_or_report_folder(two_runs, capsys):
    cache, a, b = two_runs
    name_a = a.rsplit("/", 1)[-1]
    assert main(["compare", name_a, str(cache / "reports" / b.rsplit("/", 1)[-1]), "--cache-dir", str(cache)]) == 0


@pytest.mark.parametrize("change, expect", [({"data_fingerprint": "other images", "seed": 1}, "different images"),
                                             ({"per_class": (20, 5, 3), "seed": 2}, "different val images")])
def test_runs_on_different_images_are_refused(two_runs, tmp_path, capsys, change, expect):
    cache, a, _ = two_runs
    path = synthetic_features(tmp_path, **{"per_class": (20, 10, 3), "shuffle": True, **change})
    other = training.run_head(load_features(path), "logreg", kinds.make_settings("logreg"), cache)
    capsys.readouterr()
    assert main(["compare", a, other["run_dir"], "--cache-dir", str(cache)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expect in err and len(err.strip().splitlines()) == 1


def test_not_a_run_is_one_error_line(tmp_path, capsys):
    assert main(["compare", str(tmp_path), "nothing", "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a run" in err and len(err.strip().splitlines()) == 1


def test_sweep_marks_ties_with_the_best_and_recommends_one(two_runs):
    cache, a, b = two_runs
    runs = [Run.read(d).record | {"run_dir": d} for d in (a, b)]
    rows = leaderboard.leaderboard(runs, [], ties=True)
    best, other = rows
    assert best["val_p_vs_best"] == 1.0 and best["tied_with_best"]
    ra, rb = _right(best["run_dir"], "val"), _right(other["run_dir"], "val")
    assert other["val_p_vs_best"] == pytest.approx(stats.mcnemar_exact(int(np.sum(ra & ~rb)), int(np.sum(rb & ~ra))))
    assert other["tied_with_best"] == (other["val_p_vs_best"] >= kinds.TIE_LEVEL)
    assert sum(r["recommended"] for r in rows) == 1
    assert all(r["val_accuracy_low"] <= r["val_accuracy"] <= r["val_accuracy_high"] for r in rows)
    # runs recorded before intervals existed: the interval comes from their report's confusion matrix
    old = [{**r, "metrics": {k: v for k, v in r["metrics"].items() if not k.endswith("_interval")},
            "report": str(cache / "reports" / r["run_dir"].rsplit("/", 1)[-1])} for r in runs]
    assert [r["test_accuracy_low"] for r in leaderboard.leaderboard(old, [], ties=True)] == [
        r["test_accuracy_low"] for r in rows]


def test_sweep_ties_without_per_image_predictions_are_left_unmarked(two_runs, tmp_path):
    _, a, b = two_runs
    # the same runs as if their reports were gone (a cache from before predictions.csv)
    runs = [Run.read(d).record | {"run_dir": str(tmp_path / "heads" / d.rsplit("/", 1)[-1])}
            for d in (a, b)]
    rows = leaderboard.leaderboard(runs, [], ties=True)
    assert [r["tied_with_best"] for r in rows] == [None, None] and rows[0]["recommended"]


def test_site_and_report_show_the_intervals(two_runs, tmp_path):
    """The report site's index and run pages carry each accuracy's interval, per-class recall
    intervals, and a sweep's recommended run (a leaderboard saved into the cache)."""
    from pipeline.heads import evaluation
    from pipeline.look import report as site
    cache, a, b = two_runs
    runs = [Run.read(d).record | {"run_dir": d} for d in (a, b)]
    rows = leaderboard.leaderboard(runs, [], ties=True)
    leaderboard.save_leaderboard(rows, cache / "sweeps" / "test-sweep")
    site.rebuild(cache)
    name = a.rsplit("/", 1)[-1]
    saved = json.loads((cache / "reports" / name / "report.json").read_text())
    val = saved["splits"]["val"]
    assert saved["val_accuracy_interval"] == val["accuracy_interval"] == evaluation.accuracy_interval(val)
    low, high = val["accuracy_interval"]
    assert low < val["accuracy"] < high and "Wilson" in saved["intervals"]
    text = stats.interval_text(val["accuracy"], low, high)
    assert text in (cache / "reports" / "index.html").read_text()
    page = (cache / "reports" / "runs" / f"{name}.html").read_text()
    assert text in page and "recall [95% CI]" in page
    recommended = next(r["run"] for r in rows if r["recommended"])
    index = (cache / "reports" / "index.html").read_text()
    assert f'<a href="runs/{recommended}.html">{recommended}</a></td></tr>' in index and "McNemar" in index
    assert text in evaluation.summary_table(saved) and "recall 95% CI" in evaluation.summary_table(saved)


@pytest.mark.slow
def test_compare_two_real_runs(real_features, tmp_path, capsys):
    """Dense against logreg on the shared EfficientNet-Lite0 features of real CIFAR-10 images: the
    paired difference, its interval, McNemar's p, and a gallery of real disagreements."""
    cache = tmp_path / "cache"
    fs = load_features(real_features)
    a = training.run_head(fs, "dense", kinds.make_settings("dense", hidden=256, epochs=20), cache)
    b = training.run_head(fs, "logreg", kinds.make_settings("logreg"), cache)
    capsys.readouterr()
    assert main(["compare", a["run_dir"], b["run_dir"], "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    saved = json.loads(next((cache / "compare").glob("*/compare.json")).read_text())
    t = saved["splits"]["test"]
    assert t["a"]["accuracy"] == pytest.approx(a["metrics"]["test_accuracy"])
    assert t["b"]["accuracy"] == pytest.approx(b["metrics"]["test_accuracy"])
    assert t["difference_low"] <= t["difference"] <= t["difference_high"] and 0 < t["mcnemar_p"] <= 1
    assert stats.signed_text(t["difference"], t["difference_low"], t["difference_high"]) in out
    assert f"{t['mcnemar_p']:.3g}" in out
    assert saved["gallery"].get("file") == "disagreements.png", saved["gallery"]


def test_the_recommended_tie_is_the_most_regularized(monkeypatch):
    """Three logreg configurations right on the same val images (all tied): the smallest C is
    recommended however long each took; without ties, the best alone."""
    monkeypatch.setattr(leaderboard, "val_correct", lambda run_dir: np.array([True, False] * 10))
    runs = [{"run_dir": f"cache/heads/logreg-{c}", "head": "logreg", "settings": {"C": c, "max_iter": 100},
             "metrics": {"val_accuracy": 0.5, "test_accuracy": 0.5, "wall_seconds": w}}
            for c, w in ((1.0, 1.0), (0.01, 9.0), (0.1, 2.0))]
    rows = leaderboard.leaderboard(runs, ["C"], ties=True)
    assert all(r["tied_with_best"] for r in rows)
    assert [r["C"] for r in rows if r["recommended"]] == [0.01]
    assert "logreg: smaller C" in kinds.TIE_RULE and "dense: smaller hidden" in kinds.TIE_RULE


def test_a_deleted_gallery_is_remade_never_up_to_date(two_runs, tmp_path, capsys):
    """Issue 22.11: compare.json is sealed with its folder's files; one deleted is not "up to date"."""
    cache, a, b = two_runs
    assert main(["compare", a, b, "--cache-dir", str(tmp_path)]) == 0
    gallery = next((tmp_path / "compare").glob("*/disagreements.png"))
    gallery.unlink()
    capsys.readouterr()
    assert main(["compare", a, b, "--cache-dir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "up to date" not in out + err and gallery.is_file() and "remaking" in out, (out, err)
