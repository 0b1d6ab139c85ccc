"""The fine-tuned model against its starting head: the comparison stored in run.json and report.json,
and the table printed at the end of a run."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.foundation import stats
from pipeline.foundation.tables import paired_table


def compare(y_true: dict, head_prob: dict, tuned_prob: dict, head_path: Path, head_info: dict) -> dict:
    """The fine-tuned model against its starting head on the same val and test images, stated as
    `python -m pipeline compare` states two runs (pipeline.foundation.stats.paired): accuracies with 95%
    intervals, the change with its paired bootstrap interval, McNemar's exact p."""
    paired = {k: stats.paired(np.argmax(head_prob[k], 1) == y_true[k], np.argmax(tuned_prob[k], 1) == y_true[k])
              for k in y_true}

    def accuracy(side):
        return {key: value for k, p in paired.items() for key, value in (
            (f"{k}_accuracy", round(p[side]["accuracy"], 4)),
            (f"{k}_accuracy_interval", [round(p[side]["low"], 4), round(p[side]["high"], 4)]))}
    head = {"path": str(head_path), **accuracy("a")}
    if head_info.get("metrics"):
        head["reported"] = head_info["metrics"]
    tuned = accuracy("b")
    return {"head": head, "finetuned": tuned, "paired": paired,
            "delta": {f"{k}_accuracy": round(p["difference"], 4) for k, p in paired.items()}}


def comparison_table(c: dict) -> str:
    return paired_table(c["paired"], "head", "tuned")
