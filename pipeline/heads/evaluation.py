"""Reports for any trained classifier: metrics JSON, a confusion-matrix heatmap, learning curves.

`write_report` takes true labels and predicted probabilities per split ("val", "test", ...) and
writes, into one folder that appears atomically:
    report.json     accuracy with its 95% Wilson interval, per-class precision/recall (with its
                    interval)/F1/support and the confusion matrix of every split, the wall time,
                    and whatever `extra` the caller adds
    confusion.png   one heatmap per split (rows: true class, columns: predicted)
    curves.png      loss and accuracy per epoch, when a Keras history is given
    reliability.png accuracy against confidence per split (15 bins), before and after temperature
                    scaling when the caller fitted one; report.json's "calibration" holds the ECE
                    and NLL of each (pipeline.heads.calibration)
Test numbers are for reading only; nothing here chooses anything by them.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.foundation import layout, stats
from pipeline.foundation.outputs import atomic_dir
from pipeline.foundation.tables import format_table
from pipeline.heads.mistakes import write_run_views
from pipeline.heads import calibration


def split_metrics(y_true, y_prob, class_names) -> dict:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_prob).argmax(axis=1)
    labels = np.arange(len(class_names))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    confusion = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    recall_ci = stats.per_class_recall(y_true, y_pred, len(class_names))
    return {
        "accuracy": float(np.mean(y_pred == y_true)),
        "accuracy_interval": accuracy_interval({"confusion": confusion}),
        "per_class": {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s),
                             "recall_interval": [round(lo, 4), round(hi, 4)]}
                      for name, p, r, f, s, (lo, hi) in zip(class_names, precision, recall, f1, support, recall_ci)},
        "confusion": confusion,
    }


def accuracy_interval(split: dict) -> list[float]:
    """[low, high]: the 95% Wilson interval of a split's accuracy, from its confusion matrix (so a
    report written before intervals existed gets one too)."""
    cm = np.asarray(split["confusion"])
    low, high = stats.wilson(int(np.trace(cm)), int(cm.sum()))
    return [round(low, 4), round(high, 4)]


def recorded_interval(metrics: dict, report: dict, split: str) -> list[float] | None:
    """[low, high] of a run's `split` accuracy: as its run.json metrics record it, else from its
    report's confusion matrix (runs made before intervals were recorded); None without either."""
    if metrics.get(f"{split}_accuracy_interval"):
        return metrics[f"{split}_accuracy_interval"]
    try:
        return accuracy_interval(report["splits"][split])
    except (KeyError, TypeError, ValueError):
        return None


def accuracy_text(split: dict) -> str:
    """"0.8123 [0.8012, 0.8230]": a split's accuracy with its 95% interval."""
    return stats.interval_text(split["accuracy"], *accuracy_interval(split))


def _plot_confusion(path: Path, splits: dict, class_names):
    import matplotlib
    matplotlib.use("Agg")            # files only; no display on servers or in CI
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(splits), figsize=(5.5 * len(splits), 5), squeeze=False)
    for ax, (name, m) in zip(axes[0], splits.items()):
        cm = np.asarray(m["confusion"])
        ax.imshow(cm, cmap="Blues")
        ticks = np.arange(len(class_names))
        ax.set_xticks(ticks, class_names, rotation=90, fontsize=7)
        ax.set_yticks(ticks, class_names, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        low, high = accuracy_interval(m)
        ax.set_title(f"{name}: accuracy {m['accuracy']:.3f} [95% CI {low:.3f}, {high:.3f}]")
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=6,
                    color="white" if v > cm.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_curves(path: Path, history: dict):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    kinds = [k for k in ("loss", "accuracy") if k in history]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for key in (kind, f"val_{kind}"):
            if key in history:
                ax.plot(np.arange(1, len(history[key]) + 1), history[key], label=key)
        ax.set_xlabel("epoch")
        ax.set_title(kind)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out_dir, *, y_true: dict, y_prob: dict, class_names, wall_seconds, calibrated, history=None,
                 extra=None, features=None, cache_dir=None) -> dict:
    """Write report.json, confusion.png, reliability.png (and curves.png) to `out_dir`; return the
    report dict. `features`: the FeatureSet whose val/test rows y_true and y_prob are, in order; with
    it the report also holds predictions.csv, mistakes.png and the most-confused pairs
    (pipeline.heads.mistakes; `cache_dir`: the cache its source check is remembered in). `calibrated`:
    the run's calibration.Calibration, computed once by the caller."""
    out_dir = Path(out_dir)
    class_names = list(class_names)
    splits = {name: split_metrics(y_true[name], y_prob[name], class_names) for name in y_true}
    report = {**{f"{name}_accuracy": m["accuracy"] for name, m in splits.items()},
              **{f"{name}_accuracy_interval": m["accuracy_interval"] for name, m in splits.items()},
              "intervals": stats.ACCURACY_METHOD + " (accuracy, and each class's recall)",
              "wall_seconds": round(float(wall_seconds), 2), "class_names": class_names,
              "splits": splits, "calibration": calibrated.summary,
              **(extra or {})}
    with atomic_dir(out_dir) as tmp:
        _plot_confusion(tmp / layout.CONFUSION_PNG, splits, class_names)
        calibration.plot_reliability(tmp / layout.RELIABILITY_PNG, calibrated)
        if history:
            _plot_curves(tmp / layout.CURVES_PNG, history)
        if features is not None:
            # which images these are scored on: `compare` refuses two runs whose sources differ
            report["data_fingerprint"] = features.attrs.get("data_fingerprint")
            report.update(write_run_views(tmp, features, y_true, y_prob, class_names, splits, cache_dir))
        (tmp / layout.REPORT_JSON).write_text(json.dumps(report, indent=2))
    return report


def summary_table(report: dict, title: str = "") -> str:
    """Per-class precision/recall/F1 on every split, with the accuracies and wall time on top."""
    splits = report["splits"]
    head = "  ".join(f"{name} accuracy {accuracy_text(m)}" for name, m in splits.items())
    headers = ["class"] + [f"{name} {k}" for name in splits for k in ("prec", "recall", "recall 95% CI", "f1")]
    rows = [[cls] + [v for name in splits for v in _class_cells(splits[name]["per_class"][cls])]
            for cls in report["class_names"]]
    top = f"{title}\n" if title else ""
    confused = "".join(f"\nmost confused ({name}, true -> predicted): "
                       + ", ".join(f"{p['true']} -> {p['predicted']} {p['count']}" for p in pairs)
                       for name, pairs in report.get("most_confused", {}).items() if pairs)
    return (f"{top}{head}  wall {report['wall_seconds']:.1f} s\n{format_table(headers, rows)}{confused}"
            f"\nintervals: {stats.ACCURACY_METHOD}")


def _class_cells(c: dict) -> list:
    interval = c.get("recall_interval")
    return [c["precision"], c["recall"], f"[{interval[0]:.2f}, {interval[1]:.2f}]" if interval else "", c["f1"]]


def print_summary(report: dict, title: str = ""):
    print(summary_table(report, title))
