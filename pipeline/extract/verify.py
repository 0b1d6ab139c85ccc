"""The `verify` command: stage one's check, a seeded sample of rows embedded again and compared."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from pipeline import store
from pipeline.backbones.folding import fast_extractor
from pipeline.backbones.rebuild import rebuild_backbone
from pipeline.extract import views
from pipeline.foundation import flags, settings
from pipeline.foundation.errors import UserError
from pipeline.foundation.machine import versions
from pipeline.foundation.settings import Interval, setting
from pipeline.sources import dataset, partition, rows
from pipeline.store.features import load_features


# precision -> (smallest cosine, largest |difference| / largest |value| of the row) still "the same
# row". Measured (shared EfficientNet-Lite0, real CIFAR-10, Xeon with AMX): re-embedding on the
# machine that made the file gives bit-identical rows in float32 (200 rows) and bfloat16 (256);
# the limits leave room for another CPU's rounding (float32 differs across instruction sets in the
# last bits; bfloat16 keeps 8 significant bits) and stay far below what another image gives.
TOLERANCE = {"float32": (0.9999, 1e-3), "bfloat16": (0.999, 2e-2), "float16": (0.999, 2e-2)}
DEFAULT_SAMPLE = 256


def sample_rows(sizes: dict, n: int, seed: int) -> dict:
    """{split: sorted row numbers}: exactly n rows drawn without replacement, spread over the
    splits in proportion to their sizes (each non-empty split at least one, when n allows)."""
    total = sum(sizes.values())
    n = min(n, total)
    rng = np.random.default_rng(seed)
    want = {s: min(size, max(1 if size else 0, round(n * size / total))) for s, size in sizes.items()}
    while sum(want.values()) > n:              # rounding up (or one per split) asked for more than n
        want[max(want, key=lambda s: (want[s], s))] -= 1
    return {s: np.sort(rng.choice(sizes[s], k, replace=False)) for s, k in want.items() if k}


def machine() -> dict:
    """Library versions and the machine, as a features file records them (stage one)."""
    return versions()


def differences(recorded: dict, today: dict) -> str:
    changed = [f"{k} {recorded.get(k, '?')} -> {today.get(k, '?')}" for k in sorted(set(recorded) | set(today))
               if recorded.get(k) != today.get(k)]
    return "; ".join(changed) if changed else "same library versions and machine as recorded"


@dataclass
class VerifySettings:
    sample: int = setting(DEFAULT_SAMPLE, Interval(int, 1), "rows re-embedded, spread over the splits")
    seed: int = flags.seed_setting("which rows are sampled")
    backbone: str | None = flags.moved_backbone_setting()
    weights: str | None = flags.moved_weights_setting()
    data: str | None = flags.moved_data_setting()


def verify(path, s: VerifySettings | None = None, batch_size: int = 64) -> dict:
    """Compare re-embedded rows with the stored ones. Returns {"rows", "max_abs_diff",
    "max_relative_diff", "min_cosine", "tolerance", "first_bad"}; first_bad (split, row, source
    index, path, cosine, relative diff) is None when every row is within tolerance."""
    s = settings.check(s or VerifySettings())
    fs = load_features(path)
    attrs = fs.attrs
    bb = rebuild_backbone(attrs, s.backbone, s.weights)       # other weights: refused here, by their identity
    extract = fast_extractor(bb.model, attrs["precision"])
    min_cos, max_rel = TOLERANCE[attrs["precision"]]
    picked = sample_rows({k: len(fs.splits[k].labels) for k in store.SPLITS}, s.sample, s.seed)
    result = {"rows": 0, "max_abs_diff": 0.0, "max_relative_diff": 0.0, "min_cosine": 1.0,
              "tolerance": {"min_cosine": min_cos, "max_relative_diff": max_rel}, "first_bad": None}
    source = _source_splits(attrs, s.data)
    for split, at in picked.items():
        index = fs.splits[split].index[at]
        _check_labels(path, split, at, fs.splits[split], source[split], attrs["class_names"])
        images, paths = rows.images(attrs, split, index, s.data)
        for lo in range(0, len(at), batch_size):
            batch = images[lo:lo + batch_size]
            for stored, fresh in zip(fs.splits[split].views, views.image_views(batch, len(fs.splits[split].views))):
                stored = np.asarray(stored[at[lo:lo + batch_size]], np.float64)
                fresh = np.asarray(extract(fresh), np.float64)
                abs_diff = np.abs(stored - fresh).max(axis=1)
                rel = abs_diff / np.maximum(np.abs(stored).max(axis=1), 1e-12)
                cos = np.sum(stored * fresh, 1) / np.maximum(
                    np.linalg.norm(stored, axis=1) * np.linalg.norm(fresh, axis=1), 1e-12)
                result["max_abs_diff"] = max(result["max_abs_diff"], float(abs_diff.max()))
                result["max_relative_diff"] = max(result["max_relative_diff"], float(rel.max()))
                result["min_cosine"] = min(result["min_cosine"], float(cos.min()))
                bad = np.flatnonzero((cos < min_cos) | (rel > max_rel))
                if len(bad) and result["first_bad"] is None:
                    i = int(bad[0])
                    result["first_bad"] = {"split": split, "row": int(at[lo + i]), "source_index": int(index[lo + i]),
                                           "path": paths[lo + i], "cosine": float(cos[i]),
                                           "relative_diff": float(rel[i])}
        result["rows"] += len(at)
    return result


def _source_splits(attrs: dict, data_path) -> dict:
    """The source's splits as stage one made them (labels and source indices; no image decoded)."""
    limit = attrs["limit"] if attrs["limit"] != -1 else None
    return partition.make_splits(dataset.load_dataset(dataset.source_of(attrs, data_path), limit),
                                 attrs["val_fraction"], attrs["split_seed"])


def _check_labels(path, split: str, at, stored, source, class_names):
    """The sampled rows' labels and source indices are the source's: a file whose labels were
    swapped or shifted is refused, as one whose rows changed."""
    if len(source.y) != len(stored.labels):
        raise UserError(f"{path}: its {split} split has {len(stored.labels)} rows, its source's {len(source.y)}; "
                        "the source changed or the file is not its own")
    for row in at:
        if int(stored.index[row]) != int(source.index[row]) or int(stored.labels[row]) != int(source.y[row]):
            raise UserError(f"{path}: {split} row {int(row)} (source index {int(stored.index[row])}) is labelled "
                            f"{class_names[int(stored.labels[row])]!r} but its source image is "
                            f"{class_names[int(source.y[row])]!r} (source index {int(source.index[row])}); "
                            "the file's labels changed since stage one wrote them")


# ---------------------------------------------------------------- command line

HELP = """Does a features file still hold what its backbone gives today?

  python -m pipeline verify cache/features/F.h5 [--sample 256]

Re-embeds a seeded random sample of rows (spread over train, val and test in proportion to their
sizes, every stored view) from the file's own source images, with the file's own backbone
(rebuilt and checked by its weights identity, as `finetune` and `neighbors` rebuild it), precision
and image size, and compares them with the stored rows: the largest absolute difference (as a
share of the row's largest value) and the smallest cosine similarity. Exit 0 when every sampled
row is within the precision's tolerance; otherwise exit 2 with one `error:` line
naming the first differing row and what differs between the library versions and machine the
file records and today's. A replaced source image, other weights, a TensorFlow, Keras or oneDNN
upgrade, or another CPU's bfloat16 arithmetic all show up here.
"""


def add_arguments(p):
    p.add_argument("file", metavar="FILE", help="the features file to check")
    settings.add_flags(p, VerifySettings)


def run(args):
    started = time.perf_counter()
    r = verify(args.file, settings.from_args(VerifySettings, args))
    seconds = time.perf_counter() - started
    tol = r["tolerance"]
    print(f"verify: {r['rows']} rows re-embedded in {seconds:.1f} s; largest difference {r['max_abs_diff']:.3g} "
          f"({r['max_relative_diff']:.3g} of the row's largest value; allowed {tol['max_relative_diff']:g}), "
          f"smallest cosine {r['min_cosine']:.6f} (allowed {tol['min_cosine']:g})")
    bad = r["first_bad"]
    if bad:
        attrs = store.read_rows(args.file, splits=(), values=False).attrs
        where = f" ({bad['path']})" if bad["path"] else ""
        raise UserError(f"{args.file}: {bad['split']} row {bad['row']} (source index {bad['source_index']}{where}) "
                        f"differs from what its backbone gives today (cosine {bad['cosine']:.4f}, difference "
                        f"{bad['relative_diff']:.3g} of its largest value): the source image, the weights or the "
                        f"libraries changed; recorded vs today: {differences(attrs.get('versions') or {}, machine())}")
    print("ok: the stored rows are what the backbone gives today")
