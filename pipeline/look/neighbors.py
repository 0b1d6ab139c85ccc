"""The `neighbors` command: a cosine search over a features file (pipeline.search), cached by its question."""
from __future__ import annotations

import argparse
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import search as index_search, store
from pipeline.backbones.rebuild import row_extractor
from pipeline.foundation import flags, identity, layout, outputs, records, settings
from pipeline.foundation.errors import UserError
from pipeline.foundation.settings import Checked, Choice, Interval, setting
from pipeline.foundation.tables import format_table
from pipeline.foundation.gallery import save_grid
from pipeline.sources import images
from pipeline.sources import rows


def read_files(attrs: dict, files: list[Path]) -> list[np.ndarray]:
    """Image files decoded as stage one decoded the features file's images (rows.decoding_of)."""
    return list(images.FileImages(np.asarray([str(f) for f in files]), rows.decoding_of(attrs)).read())


def embed_files(attrs: dict, files: list[Path], backbone=None, weights=None, batch: int = 64) -> np.ndarray:
    """Features of image files computed as stage one computed the file's rows: the same decoding,
    network (checked by its weights identity) and precision, `batch` files at a time."""
    extract = row_extractor(attrs, backbone, weights)
    return np.concatenate([extract(read_files(attrs, files[lo:lo + batch])) for lo in range(0, len(files), batch)])


def parse_splits(text: str) -> str:
    """--search: splits, comma-separated, each once (kept as text, so a checked value checks again)."""
    names = [s.strip() for s in str(text).split(",") if s.strip()]
    if not names or any(s not in store.SPLITS for s in names):
        raise argparse.ArgumentTypeError(f"expected splits from {', '.join(store.SPLITS)}, comma-separated, "
                                         f"got {text!r}")
    return ",".join(dict.fromkeys(names))


@dataclass
class NeighborsSettings:
    features: str | None = flags.features_setting()
    split: str | None = setting(None, Choice(store.SPLITS), "split of the query row")
    row: int | None = setting(None, Interval(int, 0), "row of the query in --split (0-based)")
    k: int = setting(8, Interval(int, 1), "neighbours per query")
    search: str = setting("train", Checked(parse_splits, "splits, comma-separated", "SPLIT[,SPLIT]"),
                          "splits searched, comma-separated")
    backbone: str | None = flags.moved_backbone_setting()
    weights: str | None = flags.moved_weights_setting()
    data: str | None = flags.moved_data_setting()
    cache_dir: str = flags.cache_dir_setting()


HELP = """The k most similar images (cosine similarity of cached features) to a row or to image files.

  python -m pipeline neighbors --features F --split test --row 17
  python -m pipeline neighbors --features F --backbone B.keras cat.jpg ship.png

Image files are embedded exactly as stage one embedded its images: the features file's own
backbone (rebuilt and checked by its identity), its precision, each image resized alone by the
network's resize layer whatever its size. The search goes through the features file's cached index
of the searched splits (cache/indexes/): exact up to 100,000 rows, approximate (an inverted file)
above, its recall@10 against the exact search recorded in the JSON answer.
Prints rank, similarity, split, row, class, source index and path; writes a PNG strip (query,
then its neighbours) and the list as JSON to cache/looking/neighbors-<hash>.* (the same question
again is up to date). Paths and pictures come from the source checked against the file's data
fingerprint; the answer's key holds the file's hash, its data fingerprint, that source, each query
image's bytes and name, and the index settings.
"""


def add_arguments(p):
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files to find neighbours of "
                   "(instead of --split/--row)")
    settings.add_flags(p, NeighborsSettings)


def run(args):
    run_neighbors(settings.from_args(NeighborsSettings, args), args.images)


def _check_question(s: NeighborsSettings, images: list):
    if images and (s.split is not None or s.row is not None):
        raise UserError("give either IMAGE files or --split with --row, not both")
    if not images and (s.split is None or s.row is None):
        raise UserError("give IMAGE files, or --split and --row naming a row of the features file")
    for f in images:
        if not Path(f).is_file():
            raise UserError(f"image {f} does not exist")


def run_neighbors(s: NeighborsSettings, images=(), log=print) -> dict:
    """Answer (or find up to date) the question, print it and where it is; return the answer."""
    s = settings.check(s)
    images = [str(f) for f in images]
    _check_question(s, images)
    search = s.search.split(",")
    fs = index_search.rows.features_on_disk(s)      # the rows stay on disk: the search reads them
    if images:
        # an image is its bytes, shown under the name it was given: both are the question
        question = {"images": [[hashlib.sha256(Path(f).read_bytes()).hexdigest(), f] for f in images]}
    else:
        n = len(fs.splits[s.split].labels)
        if s.row >= n:
            raise UserError(f"--row must be between 0 and {n - 1} (the {s.split} split has {n} rows), got {s.row}")
        question = {"split": s.split, "row": s.row}
    source, note = rows.source_or_note(fs.attrs, s.data, s.cache_dir)
    out = layout.folder(s.cache_dir, layout.LOOKING_DIR) / identity.name(
        {**identity.of_features(fs.attrs), "source": source and source.key, **question, "k": s.k, "search": search,
         "index": index_search.SETTINGS}, "neighbors")
    json_path, png_path = out.with_suffix(".json"), out.with_suffix(".png")

    def done():       # a damaged answer is an error naming it, never "up to date"
        return json_path.is_file() and bool(records.read(json_path, records.NEIGHBORS))

    def answer():
        result = search_neighbors(fs, s, images, search, source, log)
        found_note = note or draw_strip(png_path, fs, result, source)
        if found_note:
            result["note"] = found_note
        outputs.write_json_atomic(json_path, result)
        return result

    up_to_date, result = outputs.produce(json_path, done, answer, log,
                                         shown=png_path if png_path.is_file() else json_path)
    result = result or records.read(json_path, records.NEIGHBORS)
    print_result(result, log)
    if not up_to_date:
        log(png_path if png_path.is_file() else json_path)
    return result


def search_neighbors(fs: store.RowSet, s: NeighborsSettings, images: list[str], search: list[str],
                     source: rows.Source | None, log=print) -> dict:
    """{"queries": [{..., "neighbors": [{rank, similarity, split, row, class, source_index, path}]}],
    "search_index": the index used and its recall@10} (paths from the checked `source`; none when it is gone)."""
    names = fs.class_names
    starts = np.cumsum([0] + [len(fs.splits[sp].labels) for sp in search])   # ids count rows across `search`
    if images:
        queries = embed_files(fs.attrs, [Path(f) for f in images], s.backbone, s.weights)
        described = [{"image": f} for f in images]
        exclude = None
    else:
        split = fs.splits[s.split]
        queries = index_search.FileRows(fs.path, index_search.parts([s.split])).take([s.row])
        described = [{"split": s.split, "row": s.row, "class": names[int(split.labels[s.row])],
                      "source_index": int(split.index[s.row])}]
        own = int(starts[search.index(s.split)]) + s.row if s.split in search else -1
        exclude = np.array([own])
    if starts[-1] - (exclude is not None) < 1:
        raise UserError(f"nothing to search: the {', '.join(search)} split(s) hold no other rows")
    index, below = index_search.index_of_splits(s.cache_dir, fs.path, fs.attrs, search,
                                                {sp: len(fs.splits[sp].labels) for sp in search}, log)
    measured = index_search.recall(index, queries, exclude=exclude, below=below)     # None: exact
    idx, sim = index_search.top_k(index, queries, s.k, exclude, below=below, nprobe=measured and measured["nprobe"])

    def where(i):          # an id -> (split, row)
        part = int(np.searchsorted(starts, i, side="right")) - 1
        return search[part], int(i - starts[part])
    for q, found, sims in zip(described, idx, sim):
        q["neighbors"] = []
        for rank, (i, similarity) in enumerate(zip(found, sims), 1):
            split_name, r = where(i)
            sp = fs.splits[split_name]
            q["neighbors"].append({"rank": rank, "similarity": round(float(similarity), 6), "split": split_name, "row": r,
                                   "class": names[int(sp.labels[r])], "source_index": int(sp.index[r])})
        if source is None:
            continue          # paths are a convenience; the note says why they are missing
        for split_name in search:
            picked = [n for n in q["neighbors"] if n["split"] == split_name]
            for n, p in zip(picked, rows.paths(fs.attrs, split_name, [n["source_index"] for n in picked],
                                               source.path)):
                n["path"] = p
    return {"features": str(Path(fs.path).absolute()), "search": search, "queries": described,
            "search_index": index_search.summary(index, measured)}


def print_result(result: dict, log=print):
    for q in result["queries"]:
        what = q.get("image") or f"{q['split']} row {q['row']} ({q['class']}, source index {q['source_index']})"
        log(f"neighbours of {what}:")
        log(format_table(["rank", "similarity", "split", "row", "class", "source index", "path"],
                           [[n["rank"], n["similarity"], n["split"], n["row"], n["class"], n["source_index"],
                             n.get("path") or ""] for n in q["neighbors"]]))


def draw_strip(path: Path, fs: store.RowSet, result: dict, source: rows.Source) -> str | None:
    """One line per query: the query image, then its neighbours with rank, similarity and class,
    each at its own size. Returns a note instead when the source's images cannot be read."""
    cells, captions, wanted = [], [], []
    for q in result["queries"]:
        if "image" in q:
            cells += read_files(fs.attrs, [Path(q["image"])])
            captions.append(f"query\n{Path(q['image']).name}"[:40])
        else:
            cells.append(None)
            wanted.append((len(cells) - 1, q["split"], q["source_index"]))
            captions.append(f"query\n{q['class']}")
        for n in q["neighbors"]:
            cells.append(None)
            wanted.append((len(cells) - 1, n["split"], n["source_index"]))
            captions.append(f"#{n['rank']} {n['similarity']:.3f}\n{n['class']}")
    try:
        found = rows.images_of(fs.attrs, [(s, i) for _, s, i in wanted], source.path)
    except (UserError, OSError) as exc:
        return rows.unreadable(exc)
    for (cell, _, _), img in zip(wanted, found):
        cells[cell] = img
    save_grid(path, cells, captions, columns=len(result["queries"][0]["neighbors"]) + 1)
    return None
