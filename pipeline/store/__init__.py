"""The row store: one HDF5 file per settings, written resumably and atomically, read with checks.
Stage one keeps its features here, stage three its cut activations: "rows" are one array per image.

Layout (schema version 2), readable with plain h5py:
    /train, /val, /test        groups, each with
        features  (N, *row_shape)  one row per image (stage one: (N, D) float32 embeddings)
        labels    (N,)   uint8     class index into the `class_names` attribute
        index     (N,)   int64     row of the image in the source's train or test set
        features_mirrored (N, D) float32   only in files made with `--views 2` (root attribute
                                   views = 2): the embedding of the horizontally mirrored image
    root attributes: schema_version, complete, settings_hash, settings (JSON of the hashed
    settings), every setting on its own too, data_fingerprint, class_names, versions, created, ...

Crash safety: every dataset is created at full size with its storage allocated up front, so
writing a batch only overwrites raw bytes and never changes the file's structure; a `progress`
group (per split: a done flag per row, and stage one's fingerprint block digests) is updated
after the rows themselves, so rows may arrive in any order (shards from several workers). A run
killed at any moment leaves a readable ``.partial`` file; the next run computes only the rows
not marked done. The final name appears only through an atomic rename of a complete file.

Schema version 2 (was 1): the same layout; `data_fingerprint` is now assembled from fixed blocks
of images (see sources/digest.py), so it no longer equals a version-1 file's.

Errors speak the caller's words (`Words`): what the file is, how to make one, how to replace a
damaged one, so a reader of an activation cache is not told to run `make features`.

The modules: schema (names, the settings -> file name rule), reader (the one validator),
writer (streaming, resumable), windows (a split read a window at a time: `Rows`, and the seeded
window order streamed readers share), info (the `info` command). Callers use this package's names:
`from pipeline import store; store.read_rows(...)`.
"""
from pipeline.store.reader import (RowSet, RowSplit, check_settings, check_structure, check_values, is_complete,
                                   older_schema, open_store, read_rows)
from pipeline.store.schema import (ACTIVATION_CACHE, CHECK_ROWS, CHUNK_ROWS, FEATURES_FILE, MIRRORED, SCHEMA_VERSION,
                                   SPLITS, Words, features_path, partial_path, words_for)
from pipeline.store.windows import Rows, plan as window_plan
from pipeline.store.writer import RowWriter

__all__ = ["ACTIVATION_CACHE", "CHECK_ROWS", "CHUNK_ROWS", "FEATURES_FILE", "MIRRORED", "SCHEMA_VERSION", "SPLITS",
           "RowSet", "RowSplit", "Rows",
           "RowWriter", "Words", "check_settings", "check_structure", "check_values", "features_path",
           "is_complete", "older_schema", "open_store", "partial_path", "read_rows", "window_plan", "words_for"]
