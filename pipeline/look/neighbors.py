"""The k most similar images (cosine similarity of cached features) to a row or to image files.

  python -m pipeline neighbors --features F --split test --row 17
  python -m pipeline neighbors --features F --backbone B.keras cat.jpg ship.png

Image files are embedded exactly as stage one embedded its images: the features file's own
backbone (rebuilt and checked by its identity), its precision, each image resized alone by the
network's resize layer whatever its size. The search is brute force over every row of the searched
splits, a block of queries at a time. Prints rank, similarity, split, row, class, source index and
path; writes a PNG strip (query, then its neighbours) and the list as JSON to
cache/looking/neighbors-<hash>.* (the same question again is up to date). Paths and pictures come
from the source checked against the file's data fingerprint (rows.checked_source); the answer's
key holds the file's hash, its data fingerprint, that source, and each query image's bytes and name.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from pipeline import store
from pipeline.backbones.rebuild import row_extractor
from pipeline.foundation import flags, outputs, records
from pipeline.foundation.errors import UserError
from pipeline.foundation.tables import format_table
from pipeline.foundation.gallery import save_grid
from pipeline.look.similarity import top_k
from pipeline.sources import images
from pipeline.sources import rows
from pipeline.store.features import features_from_args


def read_files(files: list[Path]) -> list[np.ndarray]:
    """Image files decoded as stage one decodes an image folder, each at its own size."""
    return images.FileImages(np.asarray([str(f) for f in files])).read()


def embed_files(attrs: dict, files: list[Path], backbone=None, weights=None) -> np.ndarray:
    """Features of image files computed as stage one computed the file's rows: the same network
    (checked by its weights identity) and precision, each image resized alone by the network's
    own resize layer, whatever its size (engine.ExtractorSpec)."""
    return row_extractor(attrs, backbone, weights)(read_files(files))


def add_arguments(p):
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files to find neighbours of "
                   "(instead of --split/--row)")
    p.add_argument("--features", metavar="FILE", help="stage-one HDF5 file (default: the newest complete file "
                   "in CACHE/features, whatever its settings)")
    p.add_argument("--split", choices=store.SPLITS, help="split of the query row")
    p.add_argument("--row", type=int, metavar="N", help="row of the query in --split (0-based)")
    p.add_argument("--k", type=int, default=8, metavar="N", help="neighbours per query (default: 8)")
    p.add_argument("--search", default="train", metavar="SPLIT[,SPLIT]",
                   help="splits searched, comma-separated (default: train)")
    flags.add_moved_backbone(p)
    p.add_argument("--data", metavar="PATH", help="the image source, when it moved since stage one")
    flags.add_cache_dir(p)


def parse_splits(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in store.SPLITS]
    if not names or bad:
        raise UserError(f"--search takes splits from {', '.join(store.SPLITS)}, comma-separated; got {text!r}")
    return list(dict.fromkeys(names))


def _check_args(args):
    if args.k < 1:
        raise UserError(f"--k must be at least 1, got {args.k}")
    if args.images and (args.split is not None or args.row is not None):
        raise UserError("give either IMAGE files or --split with --row, not both")
    if not args.images and (args.split is None or args.row is None):
        raise UserError("give IMAGE files, or --split and --row naming a row of the features file")
    for f in args.images:
        if not Path(f).is_file():
            raise UserError(f"image {f} does not exist")


def load(args) -> store.RowSet:
    pass  # REMOVE
    return features_from_args(args)


def run(args):
    _check_args(args)
    search = parse_splits(args.search)
    fs = load(args)
    if args.images:
        # an image is its bytes, shown under the name it was given: both are the question
        question = {"images": [[hashlib.sha256(Path(f).read_bytes()).hexdigest(), str(f)] for f in args.images]}
    else:
        n = len(fs.splits[args.split].labels)
        if not 0 <= args.row < n:
            raise UserError(f"--row must be between 0 and {n - 1} (the {args.split} split has {n} rows), got {args.row}")
        question = {"split": args.split, "row": args.row}
    source, note = rows.source_or_note(fs.attrs, args.data, args.cache_dir)
    key = store.settings_hash({"features": fs.attrs["settings_hash"],
                               "data_fingerprint": fs.attrs.get("data_fingerprint"),
                               "source": source and source.key, **question, "k": args.k, "search": search})
    out = records.folder(args.cache_dir, records.LOOKING) / f"neighbors-{key}"
    json_path, png_path = out.with_suffix(".json"), out.with_suffix(".png")
    if json_path.is_file():
        result = records.read(json_path, records.NEIGHBORS)
        print_result(result)
        print(f"up to date: {png_path if png_path.is_file() else json_path}")
        return
    result = search_neighbors(fs, args, search, source)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    note = note or draw_strip(png_path, fs, result, source)
    if note:
        result["note"] = note
    outputs.write_text_atomic(json_path, json.dumps(result, indent=2))
    print_result(result)
    print(png_path if png_path.is_file() else json_path)


def search_neighbors(fs: store.RowSet, args, search: list[str], source: rows.Source | None) -> dict:
    """{"queries": [{..., "neighbors": [{rank, similarity, split, row, class, source_index, path}]}]}
    (paths from the checked `source`; none when it is gone)."""
    names = fs.class_names
    base = np.concatenate([fs.splits[s].features for s in search])
    where = [(s, r) for s in search for r in range(len(fs.splits[s].labels))]
    if args.images:
        queries = embed_files(fs.attrs, [Path(f) for f in args.images], args.backbone, args.weights)
        described = [{"image": str(f)} for f in args.images]
        exclude = None
    else:
        split = fs.splits[args.split]
        queries = split.features[args.row:args.row + 1]
        described = [{"split": args.split, "row": args.row, "class": names[int(split.labels[args.row])],
                      "source_index": int(split.index[args.row])}]
        own = where.index((args.split, args.row)) if args.split in search else -1
        exclude = np.array([own])
    if len(base) - (exclude is not None) < 1:
        raise UserError(f"nothing to search: the {', '.join(search)} split(s) hold no other rows")
    idx, sim = top_k(queries, base, args.k, exclude)
    for q, found, sims in zip(described, idx, sim):
        q["neighbors"] = []
        for rank, (i, s) in enumerate(zip(found, sims), 1):
            split_name, r = where[int(i)]
            sp = fs.splits[split_name]
            q["neighbors"].append({"rank": rank, "similarity": round(float(s), 6), "split": split_name, "row": r,
                                   "class": names[int(sp.labels[r])], "source_index": int(sp.index[r])})
        if source is None:
            continue          # paths are a convenience; the note says why they are missing
        for split_name in search:
            picked = [n for n in q["neighbors"] if n["split"] == split_name]
            for n, p in zip(picked, rows.paths(fs.attrs, split_name, [n["source_index"] for n in picked],
                                               source.path)):
                n["path"] = p
    return {"features": str(Path(fs.path).absolute()), "search": search, "queries": described}


def print_result(result: dict):
    for q in result["queries"]:
        what = q.get("image") or f"{q['split']} row {q['row']} ({q['class']}, source index {q['source_index']})"
        print(f"neighbours of {what}:")
        print(format_table(["rank", "similarity", "split", "row", "class", "source index", "path"],
                           [[n["rank"], n["similarity"], n["split"], n["row"], n["class"], n["source_index"],
                             n.get("path") or ""] for n in q["neighbors"]]))


def draw_strip(path: Path, fs: store.RowSet, result: dict, source: rows.Source) -> str | None:
    """One line per query: the query image, then its neighbours with rank, similarity and class,
    each at its own size. Returns a note instead when the source's images cannot be read."""
    cells, captions, wanted = [], [], []
    for q in result["queries"]:
        if "image" in q:
            cells += read_files([Path(q["image"])])
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
