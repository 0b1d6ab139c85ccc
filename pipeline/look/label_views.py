"""What `audit --labels` shows: the CSV files, the gallery of the top suspects beside their nearest
training images, the printed summary, and the report site's link to the gallery (pipeline.look.labels
computes the answer)."""
from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path

from pipeline import store
from pipeline.foundation.errors import UserError, first_line, warn
from pipeline.foundation.gallery import save_grid
from pipeline.foundation.tables import format_table
from pipeline.sources import rows

SHOWN_PER_SPLIT = 6        # suspects per split in the gallery, each with its nearest training images
SHOWN_NEIGHBORS = 4


def write_csv(path: Path, table: list[dict], columns: list[str]):
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    path.write_text(buf.getvalue())


def draw_suspects(path: Path, fs: store.RowSet, issues: list[dict], neighbours: dict, train_labels, source) -> str:
    """One line per suspect (the first of each split): the image with its given and suggested label,
    then its nearest training images with their labels (green: the suggested one, red: another
    than the given one). Returns the file's name, or a note on why nothing was drawn."""
    names = fs.class_names
    shown = [i for sp in store.SPLITS for i in [x for x in issues if x["split"] == sp][:SHOWN_PER_SPLIT]]
    if not shown:
        return "no flagged images"
    items, captions, colors = [], [], []
    train_index = fs.splits["train"].index
    for i in shown:
        items.append((i["split"], i["source_index"]))
        captions.append(f"#{i['rank']} {i['split']} {i['row']}\n{i['given']} -> {i['suggested']}")
        colors.append("black")
        for t in neighbours[i["split"]][i["row"]][:SHOWN_NEIGHBORS]:
            label = names[train_labels[t]]
            items.append(("train", int(train_index[t])))
            captions.append(f"train {int(t)}\n{label}")
            colors.append("green" if label == i["suggested"] else "red" if label != i["given"] else "black")
    try:
        images = rows.images_of(fs.attrs, items, source.path)
    except (UserError, OSError) as exc:
        return rows.unreadable(exc)
    save_grid(path, images, captions, columns=SHOWN_NEIGHBORS + 1, colors=colors,
              title="likely label errors (given -> suggested), then their nearest training images "
                    "(green: the suggested label, red: another)")
    return path.name


def print_summary(answer: dict, log=print):
    log("label audit (" + "; ".join(f"{sp}: {w}" for sp, w in answer["probabilities"].items()) + "):")
    log(format_table(["split", "rows", "flagged", "share"],
                     [[sp, v["rows"], v["flagged"], f"{100 * v['share']:.2f}%"] for sp, v in answer["summary"].items()]))
    top = Counter({(p["given"], p["suggested"]): 0 for p in answer["pairs"]})
    for p in answer["pairs"]:
        top[(p["given"], p["suggested"])] += p["count"]
    if top:
        log("most flagged (given -> suggested): " + ", ".join(f"{g} -> {h} {c}" for (g, h), c in top.most_common(5)))
    planted = answer.get("planted")
    if planted:
        log(f"planted flips: {planted['rows']} training labels; found by each score (flagged by cleanlab on it):")
        log(format_table(["score", "flagged", "found", "precision", "recall", "AUC"],
                         [[name, m["flagged"], m["found"], m["precision"], m["recall"], m["auc"]]
                          for name, m in planted["scores"].items()]))


def refresh_site(cache_dir):
    """The report site links every label gallery: rebuilt after a label audit, as after a run (a
    site that cannot be rebuilt is a warning, never the audit's failure)."""
    from pipeline.look import report
    try:
        report.rebuild(cache_dir)
    except (UserError, OSError) as exc:
        warn(f"{report.index_path(cache_dir)} not rebuilt ({first_line(exc)}); `python -m pipeline report` retries")
