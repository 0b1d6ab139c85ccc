"""What a run got wrong, for any classifier (head of any kind, or fine-tuned model): written into
its report folder by `evaluation.write_report` from the true labels and predicted probabilities alone.

    predictions.csv   one line per val and test row: source index, file path (image-folder sources),
                      true class, predicted class and its probability, the true class's probability, top 3
    mistakes.png      the most confident test mistakes, images read back from the source via `index`
and, for report.json, the most-confused (true, predicted) class pairs of each split. Paths and images
come from the source checked against the features file's data fingerprint (rows.source_or_note), as
in `neighbors` and `audit`: a source that is gone or changed gives a note instead, never other images.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from pipeline import store
from pipeline.foundation import layout
from pipeline.foundation.errors import UserError, first_line
from pipeline.foundation.gallery import save_grid
from pipeline.sources import rows


TOP = 3
MISTAKES = 32          # cells in mistakes.png
CONFUSED = 5           # most-confused pairs kept per split


def most_confused(confusion, class_names, n: int = CONFUSED) -> list[dict]:
    """The off-diagonal cells with the highest counts, as (true, predicted, count), largest first."""
    cm = np.asarray(confusion)
    cells = [(int(cm[i, j]), i, j) for i in range(len(cm)) for j in range(len(cm)) if i != j and cm[i, j] > 0]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [{"true": class_names[i], "predicted": class_names[j], "count": c} for c, i, j in cells[:n]]


def prediction_rows(split: str, index, y_true, y_prob, class_names, paths, rows=None):
    """predictions.csv's rows of a split, one dict at a time (a split of 500,000 images held as
    dicts took ~1 KB each); `rows`: only these positions."""
    prob = np.asarray(y_prob)
    rows = np.arange(len(prob)) if rows is None else np.asarray(rows, np.int64)
    top = np.argsort(-prob[rows], axis=1, kind="stable")[:, :TOP]
    for r, best in zip(rows.tolist(), top):
        src, t, p = index[r], int(y_true[r]), prob[r]
        row = {"split": split, "row": int(r), "source_index": int(src), "path": paths[r] or "",
               "true": class_names[t], "predicted": class_names[int(best[0])],
               "probability": f"{p[best[0]]:.6f}", "true_probability": f"{p[t]:.6f}",
               "correct": int(best[0] == t)}
        for k in range(1, len(best)):
            row[f"top{k + 1}"] = class_names[int(best[k])]
            row[f"top{k + 1}_probability"] = f"{p[best[k]]:.6f}"
        yield row


def most_confident_mistakes(y_true, y_prob, n: int = MISTAKES) -> np.ndarray:
    """Rows of the n wrong predictions with the highest predicted probability (as predictions.csv
    writes it, to 6 places), ties by row."""
    prob = np.asarray(y_prob)
    predicted = prob.argmax(axis=1)                   # the first of equal maxima, as the stable sort's
    wrong = np.flatnonzero(predicted != np.asarray(y_true))
    shown = np.array([float(f"{v:.6f}") for v in prob[wrong, predicted[wrong]]])
    return wrong[np.lexsort((wrong, -shown))][:n] if len(wrong) else wrong


def find_report(arg, cache_dir) -> Path | None:
    """The report folder (with predictions.csv) of the run `arg` names: the run's folder (a head
    run's report is cache/reports/NAME beside cache/heads/NAME, a fine-tune's is inside its folder),
    the report folder itself, or a run NAME under `cache_dir`; None when there is none."""
    p = Path(arg)
    candidates = [p, p / layout.RUN_REPORT_DIR, p.parent.parent / layout.REPORTS_DIR / p.name]
    if len(p.parts) == 1:        # a bare NAME: the cache's run first, as --cache-dir says, then the working folder
        candidates[:0] = [layout.folder(cache_dir, layout.REPORTS_DIR) / p.name,
                          layout.folder(cache_dir, layout.FINETUNE_DIR) / p.name / layout.RUN_REPORT_DIR]
    return next((d for d in candidates if (d / layout.PREDICTIONS).is_file()), None)


def read_predictions(path: Path) -> list[dict]:
    """predictions.csv back as dicts (source_index and correct as int, probabilities as float); a
    damaged file (truncated, edited) is a UserError naming it."""
    try:
        with open(path, newline="") as f:
            out = list(csv.DictReader(f))
        for line, r in enumerate(out, 2):
            if None in r or None in r.values():      # csv's marks of fields missing (a cut line) or extra
                raise ValueError(f"line {line} has missing or extra fields")
            r["source_index"], r["correct"], r["row"] = int(r["source_index"]), int(r["correct"]), int(r["row"])
            r["probability"] = float(r["probability"])
            if r["split"] not in store.SPLITS or r["correct"] not in (0, 1):
                raise ValueError(f"row {r['row']} is not a prediction")
    except (KeyError, ValueError, csv.Error) as exc:
        raise UserError(f"{path} is damaged ({first_line(exc)}); delete its run folder and rerun it") from None
    return out


def write_run_views(out_dir: Path, fs: store.RowSet, y_true: dict, y_prob: dict, class_names,
                    splits_metrics: dict, cache_dir) -> dict:
    """Write predictions.csv and mistakes.png into `out_dir` (a report folder being built); return
    what report.json gains: the most-confused pairs, and why the gallery is missing if it is.
    `cache_dir`: where the source check is remembered (rows.checked_source)."""
    class_names = list(class_names)
    extra = {"most_confused": {s: most_confused(m["confusion"], class_names) for s, m in splits_metrics.items()}}
    try:
        source, note = rows.source_or_note(fs.attrs, None, cache_dir)
    except (UserError, OSError) as exc:      # changed since stage one: the run is still a result
        source, note = None, rows.unreadable(exc)
    notes, paths = {}, {}
    with open(out_dir / layout.PREDICTIONS, "w", newline="", encoding="utf-8") as f:   # the folder appears atomically
        writer = None
        for split in y_true:
            index = fs.splits[split].index
            paths[split] = [None] * len(index)
            if source is None:
                notes[split] = note
            else:
                try:
                    paths[split] = rows.paths(fs.attrs, split, index, source.path)
                except (UserError, OSError) as exc:
                    notes[split] = rows.unreadable(exc)
            for row in prediction_rows(split, index, y_true[split], y_prob[split], class_names, paths[split]):
                if writer is None:
                    writer = csv.DictWriter(f, fieldnames=list(row), lineterminator="\n")
                    writer.writeheader()
                writer.writerow(row)

    gallery_split = "test" if "test" in y_true else next(iter(y_true))
    shown = most_confident_mistakes(y_true[gallery_split], y_prob[gallery_split])
    wrong = list(prediction_rows(gallery_split, fs.splits[gallery_split].index, y_true[gallery_split],
                                 y_prob[gallery_split], class_names, paths[gallery_split], rows=shown))
    extra["mistakes"] = {"split": gallery_split, "shown": len(wrong),
                         "source_index": [r["source_index"] for r in wrong]}
    if wrong and source is None:
        extra["mistakes"]["note"] = note
    elif wrong:
        try:
            images, _ = rows.images(fs.attrs, gallery_split, [r["source_index"] for r in wrong], source.path)
        except (UserError, OSError) as exc:
            extra["mistakes"]["note"] = rows.unreadable(exc)
        else:
            captions = [f"{r['true']}\n-> {r['predicted']} {float(r['probability']):.2f}" for r in wrong]
            save_grid(out_dir / layout.MISTAKES_PNG, images, captions,
                      title=f"most confident {gallery_split} mistakes (true -> predicted, probability)")
            extra["mistakes"]["file"] = layout.MISTAKES_PNG
    if notes:
        extra["paths_note"] = notes
    return extra
