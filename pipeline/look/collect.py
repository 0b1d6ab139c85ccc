"""Every run of a cache for the report page: its record, report and sweep, a damaged one left out
with its error named."""
from __future__ import annotations

import datetime
from pathlib import Path

from pipeline import store
from pipeline.foundation import layout, records
from pipeline.foundation.errors import UserError
from pipeline.foundation.runs import Run, run_folders
from pipeline.heads.evaluation import recorded_interval


def _features_attrs(path: str, seen: dict) -> dict:
    if path not in seen:
        try:
            seen[path] = store.read_rows(path, splits=(), values=False).attrs
        except (UserError, OSError):
            seen[path] = {}
    return seen[path]


def collect_runs(cache_dir, skipped: list | None = None) -> tuple[list[dict], list[dict]]:
    """(runs, sweeps). A run: name, kind, page, report folder, settings, accuracies, time. Any head
    kind is taken as its run.json names it. A run whose run.json or report.json is damaged is left
    out, its error appended to `skipped`: one bad run never hides the others or fails a command."""
    cache = Path(cache_dir)
    seen, runs = {}, []
    for folder in run_folders(cache):
        try:
            run = Run.read(folder)
            report_json = run.report / layout.REPORT_JSON
            report = records.read(report_json, records.REPORT) if report_json.is_file() else {}
        except UserError as exc:
            if skipped is not None:
                skipped.append(str(exc))
            continue
        info = run.record
        metrics = info["metrics"]
        # the features file is opened only for a run that does not record its backbone (older head runs)
        backbone = (info.get("backbone") or {}).get("name") or _features_attrs(str(run.features), seen).get(
            "backbone", "?")
        runs.append({
            "name": folder.name, "kind": run.kind, "sweep": "", "features": run.features.name,
            "backbone": backbone,
            "settings": _settings_text(info["settings"], run.stage == layout.FINETUNE_DIR),
            "val_accuracy": metrics.get("val_accuracy"), "test_accuracy": metrics.get("test_accuracy"),
            **{f"{k}_accuracy_interval": recorded_interval(metrics, report, k) for k in ("val", "test")},
            "wall_seconds": info.get("wall_seconds", metrics.get("wall_seconds", report.get("wall_seconds"))),
            "finished": datetime.datetime.fromtimestamp((folder / layout.RUN_JSON).stat().st_mtime,
                                                        datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
            "report_dir": run.report, "report": report, "info": info})
    by_name = {r["name"]: r for r in runs}
    sweeps = []
    for path in sorted(layout.folder(cache, layout.SWEEPS_DIR).glob("*.json")):
        try:
            board = records.read(path, records.LEADERBOARD)
        except UserError as exc:
            if skipped is not None:
                skipped.append(str(exc))
            continue
        members = [row["run"] for row in board if isinstance(row.get("run"), str) and row["run"] in by_name]
        for name in members:
            by_name[name]["sweep"] = ", ".join(filter(None, [by_name[name]["sweep"], path.stem]))
        if members:
            picked = [row.get("run") for row in board if isinstance(row, dict) and row.get("recommended")]
            sweeps.append({"name": path.stem, "runs": members, "best": members[0],
                           "recommended": picked[0] if picked and picked[0] in by_name else ""})
    return runs, sweeps


def _settings_text(settings: dict, finetune: bool) -> str:
    keep = ("mode", "unfreeze_from", "lr", "epochs", "batch_size", "augment", "optimizer", "views_per_image",
            "map_shift") if finetune else settings
    return " ".join(f"{k}={settings[k]}" for k in keep if k in settings and not isinstance(settings[k], (dict, list)))
