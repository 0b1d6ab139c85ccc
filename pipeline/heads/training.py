"""One head run: train (unless up to date), save, report, under the run's lock. Each run goes to
cache/heads/<head>-<features hash>-<settings hash>/ (the row's artifact, run.json, history.json for
heads trained by epochs) and its report to cache/reports/<same name>/. A finished run (run.json
written last, and its model) is up to date and is not trained again."""
from __future__ import annotations

import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

from pipeline import store
from pipeline.extract import views
from pipeline.foundation import identity, layout, readback, runs
from pipeline.foundation.errors import UserError, warn
from pipeline.foundation.outputs import atomic_dir, produce, write_json_atomic
from pipeline.heads import calibration
from pipeline.heads.evaluation import write_report
from pipeline.heads.kinds import HEADS, make_settings, predict_proba, resolve
from pipeline.heads.streamed_data import predict_rows


# where a run's "up to date: RUN" and leftover notices go unless the caller says (the commands: stdout)
NOTICE = partial(print, file=sys.stderr)


def run_name(head: str, features_hash: str, settings: dict) -> str:
    """The run's folder name: its kind, features, and the hash of its settings and the kind's extra identity."""
    return identity.name({**settings, **HEADS[head].extra}, head, features_hash)


def _identity(fs: store.RowSet) -> dict:
    return {"path": str(Path(fs.path).absolute()), "settings_hash": fs.attrs["settings_hash"],
            "feature_width": int(fs.attrs["feature_width"]), "class_names": fs.class_names,
            "views": len(fs.splits["train"].views)}


def finished_run(cache_dir, head: str, features_hash: str, settings: dict) -> dict | None:
    """run.json of the run with these settings (plus run_dir, report, skipped), if it finished:
    a run.json (written last) and a model."""
    name = run_name(head, features_hash, settings)
    run_dir = layout.folder(cache_dir, layout.HEADS_DIR) / name
    if not (run_dir / layout.RUN_JSON).is_file() or not (run_dir / HEADS[head].artifact).is_file():
        return None
    return {**runs.Run.read(run_dir).record, "run_dir": str(run_dir),
            "report": str(layout.folder(cache_dir, layout.REPORTS_DIR) / name), "skipped": True}


def _check_finite(y_prob: dict, head: str):
    """A diverged model (NaN or infinite probabilities) is not a result: nothing is saved. (A NaN
    epoch followed by restoring an earlier best one is fine: the saved model is what counts.)"""
    if not all(np.isfinite(p).all() for p in y_prob.values()):
        raise UserError(f"the {head} head diverged (its predictions are not finite); nothing was saved; "
                        "lower --lr or check the features")


def run_head(fs: store.RowSet, head: str, settings: dict, cache_dir, verbose=0, threads=None,
             wait: bool = False, log=NOTICE, exclude=None) -> dict:
    """Train (unless up to date: outputs.produce, "up to date: RUN" through `log`), save, report.
    Returns run.json's content plus run_dir, report and skipped. Under the run's lock (a second run
    on the same settings is refused, or with `wait` waits and then finds it done); model and report
    folders are written under temporary names and renamed when complete, run.json last.
    `exclude` (pipeline.heads.exclude.Exclusion): training rows left out, part of the run's settings."""
    settings = make_settings(head, **settings)           # a library caller's settings checked as a flag's
    trained_on = exclude.apply(fs) if exclude else fs
    settings = resolve(head, settings, trained_on)       # auto ones from the number of rows it trains on
    if exclude is not None:
        settings = {**settings, "exclude": exclude.identity}
    features_hash = fs.attrs["settings_hash"]
    name = run_name(head, features_hash, settings)
    final = layout.folder(cache_dir, layout.HEADS_DIR) / name
    report_dir = layout.folder(cache_dir, layout.REPORTS_DIR) / name

    def train():
        with atomic_dir(final) as tmp:
            started = time.perf_counter()
            model, history, metrics = HEADS[head].train(trained_on, settings, tmp,
                                                        verbose, threads)
            if history is not None:
                write_json_atomic(tmp / layout.HISTORY_JSON, history)
            wall = time.perf_counter() - started
            y_true = {s: fs.splits[s].labels for s in ("val", "test")}
            # every stored view of each image, and their mean: a 2-view file is evaluated with flip TTA
            # (streamed rows are predicted a window at a time: streamed_data.predict_rows)
            per_view = {s: views.per_view(lambda x: predict_rows(lambda r: predict_proba(model, r), x),
                                          fs.splits[s].views) for s in ("val", "test")}
            y_prob = {s: p.mean(axis=0) for s, p in per_view.items()}
            _check_finite(y_prob, head)
            # a temperature is fitted on val only for a kind whose output is a softmax layer
            calibrated = calibration.assess(y_true, per_view, fit=HEADS[head].calibrated)
            # the backbone's name recorded here too, so the report page need not open the features file again
            info = {"head": head, "settings": settings, "features": _identity(fs), "metrics": {},
                    "backbone": {"name": str(fs.attrs.get("backbone", "?"))}}
            report = write_report(report_dir, y_true=y_true, y_prob=y_prob, class_names=fs.class_names,
                                  wall_seconds=wall, history=history, features=fs, cache_dir=cache_dir,
                                  calibrated=calibrated,
                                  extra={"run": name, "head": head, "settings": settings, "features": info["features"]})
            info["calibration"] = calibrated.summary
            info["metrics"] = {"val_accuracy": report["val_accuracy"], "test_accuracy": report["test_accuracy"],
                               "val_accuracy_interval": report["val_accuracy_interval"],
                               "test_accuracy_interval": report["test_accuracy_interval"],
                               "wall_seconds": report["wall_seconds"], **metrics}
            info = readback.sealed(info, tmp, layout.RUN_JSON, name)
            write_json_atomic(tmp / layout.RUN_JSON, info)   # last: a folder with run.json is a finished run
        return {**info, "run_dir": str(final), "report": str(report_dir), "skipped": False, "model": model,
                "report_content": report}

    up_to_date, made = produce(final, lambda: finished_run(cache_dir, head, features_hash, settings) is not None,
                               train, log, wait=wait, also=[report_dir], record=layout.RUN_JSON)
    return finished_run(cache_dir, head, features_hash, settings) if up_to_date else made


def find_best_head(cache_dir, settings_hash: str, head: str = "dense") -> Path | None:
    """The model file of the finished `head` run with the best validation accuracy on the features
    file `settings_hash`; None when there is none. A run with a damaged run.json is left out with a
    warning: the user named none of them, and one bad run must not hide the others."""
    best, best_acc = None, -1.0
    heads_dir = layout.folder(cache_dir, layout.HEADS_DIR)
    for run_json in sorted(heads_dir.glob(f"{head}-{settings_hash}-*/{layout.RUN_JSON}")):
        model = run_json.parent / HEADS[head].artifact
        if not model.is_file():
            continue                       # not a finished run
        try:
            acc = runs.Run.read(run_json.parent).record["metrics"]["val_accuracy"]
        except UserError as exc:
            warn(f"left out of the search for the best {head} head: {exc}")
            continue
        if acc > best_acc:
            best, best_acc = model, acc
    return best
