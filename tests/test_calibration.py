"""Temperature scaling and calibration error: the fitted T undoes deliberate overconfidence and lowers
validation NLL, ECE by hand, the model-weight form of T equals the formula, and every head's report
carries ECE (before/after for the dense head)."""
import json

import numpy as np
import pytest

from pipeline.heads import calibration


def test_ece_by_hand():
    # confidences 0.9, 0.9 (one right) -> bin 14: |0.5 - 0.9| ; 0.6 (right) -> bin 8: |1 - 0.6|
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6]])
    y = np.array([0, 1, 1])
    assert calibration.ece(probs, y) == pytest.approx((2 * 0.4 + 1 * 0.4) / 3)
    assert calibration.ece(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1])) == 0.0


def test_fit_recovers_the_temperature_of_synthetic_overconfident_logits():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, (4000, 10))                          # calibrated logits: labels drawn from softmax(z)
    y = np.array([rng.choice(10, p=p) for p in calibration.softmax(z)])
    overconfident = 3.0 * z
    t = calibration.fit_temperature(overconfident, y)
    assert t == pytest.approx(3.0, rel=0.1)
    before = calibration.nll(calibration.softmax(overconfident), y)
    assert calibration.nll(calibration.scaled_probs(overconfident, t), y) < before - 0.1
    # two views: the mean of the views' scaled softmax is what is fitted
    two = np.stack([overconfident, overconfident + rng.normal(0, 0.1, z.shape)])
    assert calibration.fit_temperature(two, y) == pytest.approx(3.0, rel=0.15)


def test_temperature_lowers_validation_nll_of_a_deliberately_overconfident_head(tiny_backbone_features, tmp_path):
    """A trained dense head with its output logits multiplied by 5: the fitted T is about 5 times the
    original's, the validation NLL drops, and apply_temperature makes the model compute softmax(z / T)."""
    from pipeline.store.features import load_features
    from pipeline.heads.kinds import make_settings, predict_proba
    from pipeline.heads.training import run_head
    fs = load_features(tiny_backbone_features)
    result = run_head(fs, "dense", make_settings("dense", hidden=32, epochs=20, lr=3e-3), tmp_path)
    model = result["model"]
    calibration.apply_temperature(model, 0.2)                  # logits * 5: overconfident
    val = fs.splits["val"]
    probs = predict_proba(model, val.features)
    t = calibration.fit_temperature(calibration.as_logits(probs), val.labels)
    assert t > 2.0
    before, after = calibration.nll(probs, val.labels), calibration.nll(
        calibration.scaled_probs(calibration.as_logits(probs), t), val.labels)
    assert after < before
    calibration.apply_temperature(model, t)
    np.testing.assert_allclose(predict_proba(model, val.features),
                               calibration.scaled_probs(calibration.as_logits(probs), t), atol=1e-5)


@pytest.mark.slow
def test_reports_carry_ece_and_the_dense_head_its_temperature(tiny_backbone_features, tmp_path):
    from pipeline.store.features import load_features
    from pipeline.heads.kinds import make_settings, predict_proba
    from pipeline.heads.training import run_head
    fs = load_features(tiny_backbone_features)
    for head in ("dense", "logreg"):
        result = run_head(fs, head, make_settings(head, **({"epochs": 3} if head == "dense" else {})), tmp_path)
        report = json.loads((tmp_path / "reports" / result["run_dir"].rsplit("/", 1)[1] / "report.json").read_text())
        cal = report["calibration"]
        assert cal["bins"] == 15 and result["calibration"] == cal
        for split in ("val", "test"):
            probs = predict_proba(result["model"], fs.splits[split].features)
            assert cal[split]["ece_before"] == pytest.approx(calibration.ece(probs, fs.splits[split].labels), abs=1e-6)
            if head == "dense":
                assert cal["temperature"] > 0 and cal["val"]["nll_after"] <= cal["val"]["nll_before"] + 1e-9
            else:
                assert "temperature" not in cal and "ece_after" not in cal[split]
        assert (tmp_path / "reports" / result["run_dir"].rsplit("/", 1)[1] / "reliability.png").is_file()
