"""The cached index of a features file's rows: built once per features file, searched parts,
transform and index settings, under CACHE/indexes/<features>-<hash>/ (the hash covers all four),
written as every output is (outputs.produce: under its lock, into a temporary folder renamed whole,
its record index.json last and sealed with every file's size and sha256), up to date on rerun. A
folder that no longer reads back (a file removed, truncated or, for an index under CHECK_BYTES,
changed) is rebuilt, saying why; checking the sha256 of a larger one on every search would cost
more than the search, so only its sizes are checked."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.foundation import identity, layout, outputs, readback, records
from pipeline.foundation.errors import UserError
from pipeline.foundation.records import COUNT
from pipeline.search.builder import build
from pipeline.search.index import SETTINGS, Index
from pipeline.search.rows import FileRows, Transform, standardizer

CHECK_BYTES = 1 << 30

INDEX_RECORD = records.Kind("search index", {"kind": str, "rows": COUNT, "width": COUNT, "nlist": COUNT,
                                             "nprobe": COUNT, "settings": dict, "source": dict,
                                             "build_recall?": dict, "sealed?": dict},
                            "delete the folder {folder}; the next search builds it again")


def key(attrs: dict, parts, standardize: bool) -> dict:
    """What an index depends on: the features file, the searched parts, the transform, the settings."""
    return {**identity.of_features(attrs), "parts": [list(p) for p in parts], "standardize": standardize,
            "index": SETTINGS}


def folder(cache_dir, path, attrs: dict, parts, standardize: bool = False) -> Path:
    return layout.folder(cache_dir, layout.INDEXES_DIR) / identity.name(key(attrs, parts, standardize), Path(path).stem)


def cached_index(cache_dir, path, attrs: dict, parts, standardize: bool = False, log=print) -> Index:
    """The index of `parts` ([(split, dataset)]) of the features file `path` (its `attrs` read and
    checked by the caller), built unless up to date."""
    out = folder(cache_dir, path, attrs, parts, standardize)
    said = []

    def done() -> bool:
        if not (out / layout.INDEX_JSON).is_file():
            return False
        why = broken(out)
        if why and not said:
            said.append(why)
            log(f"remaking {out}: {why}")
        return not why

    def make():
        rows = FileRows(path, parts)
        log(f"building the search index of {' + '.join('/'.join(p) for p in parts)} ({rows.n:,} rows) in {out}")
        with outputs.atomic_dir(out) as tmp:
            transform = standardizer(rows) if standardize else Transform()
            index = build(rows, transform, tmp / layout.INDEX_ROWS, log)
            write(tmp, out.name, index, {"features": str(Path(path).absolute()), **key(attrs, parts, standardize)})

    # a shared input, not a command's answer: a second search (a sweep's other knn worker) waits for
    # the first to finish building it, then finds it up to date
    outputs.produce(out, done, make, log, what="search index", wait=True)
    return load(out)


def broken(out: Path) -> str | None:
    try:
        record = records.read(out / layout.INDEX_JSON, INDEX_RECORD)
    except UserError as exc:
        return str(exc)
    total = sum(f.get("bytes", 0) for f in (record.get("sealed") or {}).get("files", {}).values())
    return readback.broken(out, record, contents=total < CHECK_BYTES) or (
        None if "sealed" in record else "its record has no seal")


def write(tmp: Path, name: str, index: Index, source: dict):
    """Every file of the index into the folder `tmp` (to become `name`), its sealed record last."""
    import faiss
    np.save(tmp / layout.INDEX_IDS, index.ids)
    np.save(tmp / layout.INDEX_OFFSETS, index.offsets)
    t = index.transform
    np.savez(tmp / layout.INDEX_TRANSFORM, **({} if t.mean is None else {"mean": t.mean, "scale": t.scale}))
    if index.centroids is not None:
        quantizer = faiss.IndexFlatIP(index.width)
        quantizer.add(index.centroids)
        faiss.write_index(quantizer, str(tmp / layout.INDEX_QUANTIZER))
    record = readback.sealed({**index.meta, "source": source}, tmp, layout.INDEX_JSON, name)
    outputs.write_json_atomic(tmp / layout.INDEX_JSON, record)


def load(out: Path) -> Index:
    """The index in the folder `out` (checked by `cached_index`); its rows stay on disk."""
    import faiss
    meta = records.read(out / layout.INDEX_JSON, INDEX_RECORD)
    try:
        with np.load(out / layout.INDEX_TRANSFORM) as t:
            transform = Transform(t["mean"], t["scale"]) if "mean" in t else Transform()
        centroids = None
        if meta["kind"] != "flat":
            quantizer = faiss.read_index(str(out / layout.INDEX_QUANTIZER))
            centroids = quantizer.reconstruct_n(0, quantizer.ntotal)
        return Index(meta, np.load(out / layout.INDEX_OFFSETS), np.load(out / layout.INDEX_IDS), centroids,
                     transform, str(out / layout.INDEX_ROWS))
    except (OSError, ValueError, RuntimeError) as exc:
        raise records.damaged(out / layout.INDEX_JSON, INDEX_RECORD, f"a file beside it does not read: {exc}")
