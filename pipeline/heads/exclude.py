"""`--exclude FILE` (head, finetune): train without some training rows, e.g. the likely label errors
`audit --labels` lists. FILE is a CSV with a `row` column (rows of the features file's splits; with
`source_index` beside it, each row is checked to be that image) or a `path` column (image files of
the source), and optionally `split`: only training rows are left out; rows of val and test are
ignored, because every run is scored on all of them (so `compare` sees the same images).

The run's identity holds the rows left out (their number and a hash of the sorted row numbers),
not the file's name: the same rows from another file are the same run."""
from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import store
from pipeline.foundation.errors import UserError, first_line
from pipeline.sources import rows as source_rows

FORMAT = "a CSV with a `row` or `path` column (and optionally `split`), such as audit --labels' label_issues.csv"


@dataclass(frozen=True)
class Exclusion:
    file: Path
    rows: np.ndarray               # sorted train-split rows of the features file to leave out
    ignored: int                   # rows of the file naming val or test images

    @property
    def identity(self) -> dict:
        """What the run's hash covers: the rows left out, not where the list came from."""
        digest = hashlib.sha256(",".join(map(str, self.rows.tolist())).encode()).hexdigest()
        return {"train_rows": len(self.rows), "rows_sha256": digest}

    def keep(self, n_train: int) -> np.ndarray:
        mask = np.ones(n_train, bool)
        mask[self.rows] = False
        return mask

    def apply(self, fs: store.RowSet) -> store.RowSet:
        """`fs` with its train split's excluded rows (every stored view of them) removed."""
        train = fs.splits["train"]
        keep = self.keep(len(train.labels))
        if isinstance(train.features, store.Rows):      # a streamed file: a mask, applied as windows are read
            part = store.RowSplit(train.features.excluding(keep), train.labels[keep], train.index[keep],
                                  None if train.mirrored is None else train.mirrored.excluding(keep))
        else:
            part = store.RowSplit(train.features[keep], train.labels[keep], train.index[keep],
                                  None if train.mirrored is None else train.mirrored[keep])
        return store.RowSet(fs.path, fs.attrs, {**fs.splits, "train": part})

    def describe(self) -> str:
        also = f"; {self.ignored} val/test rows in it ignored (every run is scored on all of them)" if self.ignored else ""
        return f"--exclude {self.file}: training without {len(self.rows)} training rows{also}"


def _table(path: Path) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            table = list(reader)
            header = reader.fieldnames or []
    except FileNotFoundError:
        raise UserError(f"--exclude {path} does not exist") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"--exclude {path} is not {FORMAT} ({first_line(exc)})") from None
    if not table or not ({"row", "path"} & set(header)):
        raise UserError(f"--exclude {path} is not {FORMAT} (no rows, or neither column)")
    for line, r in enumerate(table, 2):
        if None in r or None in r.values():              # csv's marks of a cut or extra field
            raise UserError(f"--exclude {path} is damaged: line {line} has missing or extra fields")
    return table


def read_exclusion(path, attrs: dict, index: dict, data_path=None) -> Exclusion:
    """The training rows `path` names, checked against the features file (`attrs`; `index`: split
    -> source indices of its rows). Paths are matched against the source's file names."""
    path = Path(path)
    table = _table(path)
    by_path = None
    wanted, ignored = set(), 0
    for line, r in enumerate(table, 2):
        split = (r.get("split") or "train").strip()
        if split not in store.SPLITS:
            raise UserError(f"--exclude {path} is damaged: line {line} names split {split!r}, not one of "
                            f"{', '.join(store.SPLITS)}")
        if r.get("row", "").strip():
            try:
                row = int(r["row"])
            except ValueError:
                raise UserError(f"--exclude {path} is damaged: line {line}'s row {r['row']!r} is not a whole "
                                "number") from None
            n = len(index[split])
            if not 0 <= row < n:
                raise UserError(f"--exclude {path}: line {line} names {split} row {row}, but the {split} split has "
                                f"rows 0 to {n - 1}; was it made from another features file?")
            if r.get("source_index", "").strip() and r["source_index"].strip() != str(int(index[split][row])):
                raise UserError(f"--exclude {path}: line {line}'s {split} row {row} is source image "
                                f"{int(index[split][row])} in this features file, not {r['source_index']}; "
                                "it was made from another features file")
        else:
            if by_path is None:
                by_path = _rows_by_path(attrs, index, data_path)
            found = by_path.get(_norm(r.get("path", "")))
            if found is None or (r.get("split") and found[0] != split):
                raise UserError(f"--exclude {path}: line {line}'s path {r.get('path')!r} is not a "
                                f"{r.get('split') or 'train, val or test'} image of this features file")
            split, row = found
        if split == "train":
            wanted.add(row)
        else:
            ignored += 1
    if not wanted:
        raise UserError(f"--exclude {path} names no training rows (only val/test ones, which are never left out)")
    return Exclusion(path, np.array(sorted(wanted), dtype=np.int64), ignored)


def _norm(p: str) -> str:
    return str(Path(p.strip()).resolve()) if p.strip() else ""


def _rows_by_path(attrs: dict, index: dict, data_path) -> dict:
    out = {}
    for split in store.SPLITS:
        try:
            paths = source_rows.paths(attrs, split, index[split], data_path)
        except (UserError, OSError) as exc:
            raise UserError(f"--exclude names images by path, but the features file's source cannot be listed "
                            f"({first_line(exc)}); use a CSV with a `row` column") from None
        for row, p in enumerate(paths):
            if p:
                out[_norm(p)] = (split, row)
    return out


def split_index(features_path) -> dict:
    """split -> the source index of each row, read without loading the features."""
    with store.open_store(Path(features_path)) as f:
        return {s: f[s]["index"][...] for s in store.SPLITS}
