"""pipeline.foundation.stats against hand computations, and the Wilson interval's coverage on simulated draws."""
import math

import numpy as np
import pytest

from pipeline.foundation import stats


def test_wilson_matches_the_hand_computation():
    # 8 of 10, z = 1.96: centre (0.8 + z^2/20) / (1 + z^2/10) = 0.71673, half-width
    # z / (1 + z^2/10) * sqrt(0.8*0.2/10 + z^2/400) = 0.22658 (the textbook 0.490 to 0.943)
    low, high = stats.wilson(8, 10)
    assert low == pytest.approx(0.49016, abs=1e-4) and high == pytest.approx(0.94331, abs=1e-4)
    assert stats.wilson(0, 10)[0] == 0.0 and stats.wilson(10, 10)[1] == 1.0
    assert stats.wilson(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize("p, n", [(0.8, 100), (0.95, 60), (0.5, 30)])
def test_wilson_covers_the_true_rate_about_95_percent_of_the_time(p, n):
    draws = np.random.default_rng(0).binomial(n, p, size=4000)
    covered = np.mean([lo <= p <= hi for lo, hi in (stats.wilson(int(k), n) for k in draws)])
    assert 0.93 <= covered <= 0.975, covered


def test_per_class_recall_intervals():
    y_true = [0, 0, 0, 0, 1, 1]
    y_pred = [0, 0, 0, 1, 1, 0]
    (lo0, hi0), (lo1, hi1) = stats.per_class_recall(y_true, y_pred, 2)
    assert (lo0, hi0) == stats.wilson(3, 4) and (lo1, hi1) == stats.wilson(1, 2)


def test_mcnemar_exact_matches_the_binomial_by_hand():
    # 2 vs 8 discordant: 2 * (C(10,0) + C(10,1) + C(10,2)) / 2^10 = 2 * 56 / 1024
    assert stats.mcnemar_exact(2, 8) == pytest.approx(112 / 1024)
    assert stats.mcnemar_exact(8, 2) == stats.mcnemar_exact(2, 8)
    assert stats.mcnemar_exact(5, 5) == 1.0 and stats.mcnemar_exact(0, 0) == 1.0
    assert stats.mcnemar_exact(0, 10) == pytest.approx(2 / 1024)


def test_paired_comparison_and_swapping_a_and_b():
    rng = np.random.default_rng(1)
    a = rng.random(400) < 0.70
    b = a.copy()
    b[rng.choice(400, 40, replace=False)] ^= True        # 40 images change hands
    ab, ba = stats.paired(a, b), stats.paired(b, a)
    assert ab["only_a"] == ba["only_b"] and ab["only_b"] == ba["only_a"]
    assert ab["only_a"] + ab["only_b"] == 40
    assert ab["difference"] == pytest.approx((b.sum() - a.sum()) / 400)
    assert ab["difference"] == pytest.approx(-ba["difference"])
    assert ab["difference_low"] == pytest.approx(-ba["difference_high"])
    assert ab["difference_high"] == pytest.approx(-ba["difference_low"])
    assert ab["mcnemar_p"] == ba["mcnemar_p"] == stats.mcnemar_exact(ab["only_a"], ab["only_b"])
    assert ab["a"]["accuracy"] == pytest.approx(a.mean()) and ab["b"] == ba["a"]
    # the bootstrap interval of the mean difference is close to its normal approximation
    d = b.astype(int) - a.astype(int)
    se = d.std() / math.sqrt(len(d))
    assert ab["difference_high"] - ab["difference_low"] == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert "McNemar" in ab["method"] and "bootstrap" in ab["method"]


def test_paired_bootstrap_of_identical_or_one_sided_results():
    right = np.ones(50, bool)
    assert stats.paired_bootstrap(right, right) == (0.0, 0.0, 0.0)
    assert stats.paired_bootstrap(~right, right) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        stats.paired(right, right[:10])


def test_over_seeds_by_hand():
    s = stats.over_seeds([0.80, 0.82, 0.84])
    # sd 0.02; t(0.975, 2 df) = 4.302653; half-width 4.302653 * 0.02 / sqrt(3) = 0.049683
    assert s["mean"] == pytest.approx(0.82) and s["sd"] == pytest.approx(0.02)
    assert s["low"] == pytest.approx(0.82 - 0.049683, abs=1e-5) and s["high"] == pytest.approx(0.82 + 0.049683, abs=1e-5)
    assert stats.over_seeds([0.8]) == {"mean": 0.8, "sd": None, "low": None, "high": None, "n": 1}


def test_texts():
    assert stats.interval_text(0.8, 0.49016, 0.94331) == "0.8000 [0.4902, 0.9433]"
    assert stats.interval_text(0.8, None, None) == "0.8000"
    assert stats.signed_text(0.012, -0.004, 0.028) == "+0.0120 [-0.0040, +0.0280]"


def test_head_seeds_reports_mean_sd_and_interval(tmp_path, capsys):
    """`head --seeds 2` on a tiny dense head: two ordinary runs and their summary."""
    import json
    from conftest import synthetic_features
    from pipeline.cli import main
    features = synthetic_features(tmp_path, width=8, per_class=(10, 5, 5), shuffle=True)
    argv = ["head", "--features", str(features), "--cache-dir", str(tmp_path / "cache"), "--seeds", "2",
            "--seed", "4", "--hidden", "0", "--epochs", "2", "--batch-size", "50"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    summary = json.loads(next((tmp_path / "cache" / "seeds").glob("*-x2.json")).read_text())
    assert summary["seeds"] == [4, 5] and len(set(summary["runs"])) == 2
    for split in ("val", "test"):
        a = summary[f"{split}_accuracy"]
        assert a == {**stats.over_seeds(a["per_seed"]), "per_seed": a["per_seed"]}
        assert f"{split} accuracy over 2 seeds: mean" in out
    assert "Student-t" in out
    run_jsons = [tmp_path / "cache" / "heads" / r / "run.json" for r in summary["runs"]]
    stamps = [p.stat().st_mtime_ns for p in run_jsons]
    assert main(argv) == 0 and [p.stat().st_mtime_ns for p in run_jsons] == stamps     # the runs are reused


def test_seeds_refused_for_deterministic_heads(tmp_path, capsys):
    from pipeline.cli import main
    assert main(["head", "--head", "logreg", "--seeds", "2", "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --seeds applies to --head dense only") and len(err.strip().splitlines()) == 1
