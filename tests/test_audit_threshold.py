"""`audit` thresholds that mean something on any data: the cut derived from the data's
nearest-neighbour cosines (--threshold auto), one `warning:` line when the threshold flags most of a
split, how many flagged pairs carry different labels, and every accuracy of `audit --run` with its
95% interval."""
import json
from pathlib import Path

import numpy as np

from conftest import planted_pairs, run_cli, synthetic_features
from pipeline.look.audit_summary import derived
from pipeline.look.pair_table import read_pairs


def test_the_derived_cut_is_a_robust_outlier_cut_of_nearest_neighbour_cosines():
    """Ordinary look-alikes around 0.78 (sd 0.05) and a few copies near 1: the cut lands near
    median + 3 sd, unmoved by the copies, below every copy and above nearly every look-alike."""
    rng = np.random.default_rng(0)
    ordinary = rng.normal(0.78, 0.05, 5000)
    copies = rng.uniform(0.97, 1.0, 25)
    cut = derived({"test": np.concatenate([ordinary, copies[:15]]), "val": copies[15:]})
    assert abs(cut["threshold"] - (0.78 + 3 * 0.05)) <= 0.01
    assert (copies >= cut["threshold"]).all() and np.mean(ordinary >= cut["threshold"]) < 0.005
    assert derived({"test": np.full(10, 0.99)})["threshold"] == 0.99     # alike everywhere: no spread
    assert derived({"test": rng.normal(0.97, 0.03, 100)})["threshold"] == 1.0    # never above 1


def test_a_threshold_that_flags_most_of_a_split_warns_once_and_auto_does_not(tmp_path, capsys):
    """Tight classes: every image's nearest neighbour passes 0.9, as close-ups on white backgrounds do."""
    features = synthetic_features(tmp_path, width=16, per_class=(40, 20, 20))
    code, out, err = run_cli(capsys, "audit", "--features", features, "--cache-dir", tmp_path, "--no-exact")
    assert code == 0, err
    warnings = [line for line in err if line.startswith("warning: ")]
    assert len(warnings) == 1 and "of 200 test images" in warnings[0] and "--threshold auto" in warnings[0], err
    assert any(line.startswith("flagged pairs that carry different labels: test 0 of ") for line in out)
    result = json.loads((Path(out[-1]) / "audit.json").read_text())
    own = result["data_threshold"]
    assert any(f"its own cut (--threshold auto) is {own['threshold']:g}" in line for line in out)

    code, out, err = run_cli(capsys, "audit", "--features", features, "--cache-dir", tmp_path, "--no-exact",
                             "--threshold", "auto")
    assert code == 0 and not [line for line in err if line.startswith("warning: ")], err
    auto = json.loads((Path(out[-1]) / "audit.json").read_text())
    assert (auto["threshold"], auto["threshold_given"]) == (own["threshold"], "auto")
    assert all(s["with_duplicate"] <= s["rows"] // 2 for s in auto["summary"].values())


def test_the_data_cut_finds_the_planted_copies_and_pairs_with_other_labels_are_counted(planted, tmp_path, capsys):
    """Real CIFAR-10 images through EfficientNet-Lite0 with five train images copied into test: the
    data's own cut flags the copies and nothing else."""
    path, _, fs = planted
    code, out, err = run_cli(capsys, "audit", "--features", path, "--cache-dir", tmp_path, "--threshold", "auto")
    assert code == 0, err
    result = json.loads((Path(out[-1]) / "audit.json").read_text())
    assert result["threshold"] < 0.99
    flagged = {(p["source_index"], p["other_source_index"]) for p in read_pairs(out[-1]) if p["split"] == "test"}
    assert flagged == planted_pairs(fs)
    # a low threshold flags look-alikes of other classes too, and says how many
    code, out, err = run_cli(capsys, "audit", "--features", path, "--cache-dir", tmp_path, "--threshold", "0.6",
                             "--no-exact")
    result = json.loads((Path(out[-1]) / "audit.json").read_text())
    disagree = {q: sum(p["class"] != p["other_class"] for p in read_pairs(out[-1]) if p["split"] == q)
                for q in ("test", "val")}
    assert disagree["test"] > 0
    assert (f"flagged pairs that carry different labels: test {disagree['test']:,} of "
            f"{result['summary']['test']['pairs']:,}, val {disagree['val']:,} of") in "\n".join(out)
