"""Runs: a finished run (a folder with a run.json, from stage two or stage three) as an object with
its kind, read once through the one validating reader (pipeline.foundation.records), so no caller
compares folder names with strings or parses run.json by hand."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.foundation import readback
from pipeline.foundation.layout import (FINETUNE_DIR, HEADS_DIR, MODEL, REPORTS_DIR, RUN_JSON, RUN_REPORT_DIR, folder,
                                        resolve)
from pipeline.foundation.records import RUN, damaged, read


def run_kind(info: dict) -> str:
    """"finetune" for a stage-three run, else the head kind ("dense", "logreg", ...)."""
    return "finetune" if info.get("stage") == "finetune" else info["head"]


@dataclass(frozen=True)
class Run:
    """A finished run (a folder with a run.json): a stage-two head run or a stage-three fine-tune,
    its record read once through the validating reader. What each kind keeps where is here, so no
    caller compares folder names with strings."""
    folder: Path
    record: dict

    @classmethod
    def read(cls, folder) -> "Run":
        folder = Path(folder).absolute()
        record = read(folder / RUN_JSON, RUN)
        record["features"]["path"] = str(resolve(record["features"]["path"], folder.parent.parent))
        return cls(folder, record)

    def check_files(self) -> "Run":
        """The run, when every file its record sealed is still the one written (a model truncated
        or replaced is one UserError naming it, not "file not found" from Keras); returns self."""
        why = readback.broken(self.folder, self.record)
        if why:
            raise damaged(self.folder / RUN_JSON, RUN, f"the run's files do not read back: {why}")
        return self

    @property
    def cache(self) -> Path:
        return self.folder.parent.parent

    @property
    def stage(self) -> str:
        """FINETUNE_DIR or HEADS_DIR: the layout folder the run lives in."""
        return FINETUNE_DIR if self.record.get("stage") == "finetune" else HEADS_DIR

    @property
    def kind(self) -> str:
        """"finetune", or the head kind ("dense", "logreg", "knn")."""
        return run_kind(self.record)

    @property
    def keras(self) -> bool:
        """Whether the run's model is a Keras model (a dense head or a fine-tune), i.e. exportable."""
        return (self.folder / MODEL).is_file()

    @property
    def features(self) -> Path:
        return Path(self.record["features"]["path"])

    @property
    def report(self) -> Path:
        """Its report folder: inside a fine-tune run, beside the site for a head run."""
        if self.stage == FINETUNE_DIR:
            return self.folder / RUN_REPORT_DIR
        return folder(self.cache, REPORTS_DIR) / self.folder.name


def run_folders(cache_dir, *stages: str) -> list[Path]:
    """Every finished run folder of `stages` (default: heads and fine-tunes) in the cache, oldest
    first, unread (a damaged one is for the caller to read and report)."""
    return [p.parent for stage in (stages or (HEADS_DIR, FINETUNE_DIR))
            for p in sorted(folder(cache_dir, stage).glob(f"*/{RUN_JSON}"))]
