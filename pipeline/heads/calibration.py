"""Calibrated probabilities: temperature scaling, expected calibration error, reliability diagrams.

Temperature scaling (Guo et al., 2017) divides the logits by one scalar T > 0 fitted on the
validation split by minimizing its negative log-likelihood; the predicted class never changes for
one view, only how sure the model says it is. Logits are taken as log-probabilities: softmax is
shift-invariant, so softmax(log p / T) == softmax(z / T) for the model's own logits z, and the
same code serves any model with a softmax output. For a model whose output layer is a softmax
Dense, softmax((Wx + b) / T) == softmax((W/T) x + b/T): `apply_temperature` scales that layer's
weights, so exported and predicting models carry the temperature with built-in layers only.

With several views (pipeline.extract.views) probabilities are the mean over views of each view's scaled
softmax, which is what is fitted and what is evaluated.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.foundation.errors import UserError

BINS = 15
# log(p) of a float32 probability that underflowed to 0 is clipped here (its smallest subnormal).
_TINY = 1e-45
_LOG_T_RANGE = (np.log(0.02), np.log(50.0))


def as_logits(probs: np.ndarray) -> np.ndarray:
    """Log-probabilities in float64: logits up to a per-row constant, which softmax ignores."""
    return np.log(np.maximum(np.asarray(probs, dtype=np.float64), _TINY))


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _with_views(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    return logits[None] if logits.ndim == 2 else logits


def scaled_probs(logits: np.ndarray, temperature: float) -> np.ndarray:
    """(N, K) probabilities: the mean over views of softmax(logits / T). `logits`: (N, K) or (V, N, K)."""
    return softmax(_with_views(logits) / temperature).mean(axis=0)


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes."""
    p = np.asarray(probs, dtype=np.float64)[np.arange(len(y)), np.asarray(y, dtype=np.int64)]
    return float(-np.mean(np.log(np.maximum(p, _TINY))))


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The T minimizing the NLL of `scaled_probs(logits, T)` on (logits, y), searched on log T
    (bounded, 0.02..50: the NLL is smooth and unimodal in practice there)."""
    from scipy.optimize import minimize_scalar
    logits = _with_views(logits)
    result = minimize_scalar(lambda log_t: nll(scaled_probs(logits, np.exp(log_t)), y),
                             bounds=_LOG_T_RANGE, method="bounded", options={"xatol": 1e-5})
    return float(np.exp(result.x))


def reliability(probs: np.ndarray, y: np.ndarray, bins: int = BINS) -> dict:
    """Per equal-width confidence bin over (0, 1]: mean confidence, accuracy and count of the
    predictions whose top probability falls in it."""
    probs = np.asarray(probs, dtype=np.float64)
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == np.asarray(y)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(which, weights=confidence, minlength=bins) / count
        acc = np.bincount(which, weights=correct, minlength=bins) / count
    return {"confidence": conf, "accuracy": acc, "count": count}


def ece(probs: np.ndarray, y: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error: sum over bins of |accuracy - confidence| weighted by the bin's
    share of predictions (empty bins weigh nothing)."""
    return _ece(reliability(probs, y, bins), len(y))


def _ece(curve: dict, n: int) -> float:
    filled = curve["count"] > 0
    gaps = np.abs(curve["accuracy"][filled] - curve["confidence"][filled])
    return float(np.sum(gaps * curve["count"][filled]) / max(1, n))


@dataclass
class Calibration:
    """A run's calibration, computed once and then written wherever it is shown: run.json and
    report.json (`summary`), reliability.png (`curves`)."""
    temperature: float | None   # None: not fitted (a head without a softmax output layer)
    summary: dict               # {"bins", "temperature", split: {"ece_before", "nll_before", ...}}
    curves: dict                # split -> {"before": reliability(...), "after": ...}


def assess(y_true: dict, per_view: dict, fit: bool) -> Calibration:
    """The calibration of a run's predictions, `per_view`: split -> (V, N, K) probabilities of each
    view (or (N, K) for one view). With `fit`, T is fitted on val and every split also scored after
    scaling."""
    logits = {k: as_logits(_with_views(v)) for k, v in per_view.items()}
    before = {k: _with_views(v).mean(axis=0) for k, v in per_view.items()}
    temperature = fit_temperature(logits["val"], y_true["val"]) if fit else None
    after = {k: scaled_probs(z, temperature) for k, z in logits.items()} if fit else None
    summary, curves = {"bins": BINS}, {}
    if fit:
        summary["temperature"] = round(float(temperature), 6)
    for split, y in y_true.items():
        stages = {"before": before[split], **({"after": after[split]} if fit else {})}
        curves[split] = {stage: reliability(p, y) for stage, p in stages.items()}
        row = {}
        for stage, p in stages.items():
            row.update({f"ece_{stage}": _ece(curves[split][stage], len(y)), f"nll_{stage}": nll(p, y)})
        summary[split] = {k: round(v, 6) for k, v in row.items()}
    return Calibration(temperature, summary, curves)


def plot_reliability(path, calibration: Calibration):
    """One panel per split: accuracy against confidence per bin, before and (if fitted) after
    temperature scaling, with the diagonal of perfect calibration."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    curves = calibration.curves
    fig, axes = plt.subplots(1, len(curves), figsize=(4.8 * len(curves), 4.4), squeeze=False)
    for ax, (split, stages) in zip(axes[0], curves.items()):
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
        for stage, r in stages.items():
            label = stage if stage == "before" else f"after (T={calibration.temperature:.3f})"
            filled = r["count"] > 0
            ax.plot(r["confidence"][filled], r["accuracy"][filled], marker="o",
                    label=f"{label}: ECE {calibration.summary[split][f'ece_{stage}']:.3f}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top probability)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{split}: reliability ({BINS} bins)")
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- the model

def _layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers"):        # a nested model (the head inside an image model)
            yield from _layers(layer)
        else:
            yield layer


def output_softmax_dense(model):
    """The model's softmax Dense layer: the one output layer temperature scaling rewrites."""
    import keras
    found = [layer for layer in _layers(model) if isinstance(layer, keras.layers.Dense)
             and layer.get_config().get("activation") == "softmax"]
    if len(found) != 1:
        raise UserError(f"model {model.name} has {len(found)} softmax Dense layers; temperature scaling "
                        "needs exactly one (the output layer)")
    return found[0]


def apply_temperature(model, temperature: float):
    """Divide the output layer's kernel and bias by T in place: the model then returns
    softmax(logits / T). T = 1 leaves it as it is."""
    if temperature is None or temperature == 1.0:
        return model
    layer = output_softmax_dense(model)
    layer.set_weights([w / np.float32(temperature) for w in layer.get_weights()])
    return model
