"""The `map` command: PCA then t-SNE of a stratified subsample, and Embedding Projector files."""
from __future__ import annotations

import argparse
import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import store
from pipeline.foundation import flags, identity, layout, outputs, settings
from pipeline.foundation.errors import UserError
from pipeline.foundation.gallery import save_sprite
from pipeline.foundation.settings import Checked, Choice, Interval, setting
from pipeline.sources import rows
from pipeline.store.features import features_from_args


PCA_DIMS = 50


def stratified(labels, per_class: int, seed: int) -> np.ndarray:
    """Rows of at most `per_class` images of each class, drawn without replacement, sorted."""
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def embed_2d(x, perplexity: float, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    x = np.asarray(x, np.float32)
    dims = min(PCA_DIMS, x.shape[1], len(x) - 1)
    reduced = PCA(n_components=dims, random_state=seed).fit_transform(x) if dims < x.shape[1] else x
    # t-SNE needs perplexity < n; a third of n keeps tiny samples meaningful
    perplexity = min(perplexity, max(1.0, (len(x) - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(reduced)


def plot_map(path: Path, xy, labels, class_names, title: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for c, name in enumerate(class_names):
        at = labels == c
        if at.any():
            ax.scatter(xy[at, 0], xy[at, 1], s=6, color=cmap(c % cmap.N), label=name, alpha=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1, 0.5), frameon=False)
    fig.tight_layout()
    with outputs.atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- the Embedding Projector

def projector_config(key: str, name: str, shape: tuple[int, int], thumb: tuple[int, int]) -> str:
    """TensorBoard's ProjectorConfig as text (tensorboard/plugins/projector/projector_config.proto)."""
    return (f"# written by `python -m pipeline map`, settings {key}\n"
            "embeddings {\n"
            f'  tensor_name: "{name}"\n'
            f"  tensor_shape: {shape[0]}\n"
            f"  tensor_shape: {shape[1]}\n"
            f'  tensor_path: "{layout.PROJECTOR_TENSORS}"\n'
            f'  metadata_path: "{layout.PROJECTOR_METADATA}"\n'
            "  sprite {\n"
            f'    image_path: "{layout.PROJECTOR_SPRITE}"\n'
            f"    single_image_dim: {thumb[1]}\n"      # width first, then height
            f"    single_image_dim: {thumb[0]}\n"
            "  }\n"
            "}\n")


def projector_up_to_date(folder: Path, key: str) -> bool:
    config = folder / layout.PROJECTOR_CONFIG
    # bytes, decoded leniently: a damaged config is not up to date (rewritten), never a crash
    lines = config.read_bytes().decode("utf-8", "replace").splitlines() if config.is_file() else []
    return bool(lines) and f"settings {key}\n" in lines[0] + "\n"


def write_projector(folder: Path, key: str, name: str, features, meta: list[dict], images: list[np.ndarray]):
    """Each file written atomically; the config last, so a folder with it is complete."""
    folder.mkdir(parents=True, exist_ok=True)
    outputs.write_text_atomic(folder / layout.PROJECTOR_TENSORS,
                            "".join("\t".join(f"{v:.6g}" for v in row) + "\n" for row in features))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(meta[0]), delimiter="\t", lineterminator="\n")
    writer.writeheader()        # more than one column: the projector expects a header line
    writer.writerows(meta)
    outputs.write_text_atomic(folder / layout.PROJECTOR_METADATA, buf.getvalue())
    cell = save_sprite(folder / layout.PROJECTOR_SPRITE, images)
    outputs.write_text_atomic(folder / layout.PROJECTOR_CONFIG, projector_config(key, name, features.shape, cell))


# ---------------------------------------------------------------- command line

def projector_folder(text) -> str:
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; give a folder")
    return str(text)


@dataclass
class MapSettings:
    features: str | None = flags.features_setting()
    split: str = setting("test", Choice(store.SPLITS), "which split to map")
    per_class: int = setting(100, Interval(int, 1), "images per class in the subsample")
    perplexity: float = setting(30.0, Interval(float, 0, closed="neither"), "t-SNE perplexity", metavar="P")
    seed: int = flags.seed_setting("subsample, PCA and t-SNE seed")
    projector: str | None = setting(None, Checked(projector_folder, "a folder", "DIR"), "also write TensorBoard "
                                    "Embedding Projector files into DIR", record=False)
    data: str | None = flags.moved_data_setting()
    cache_dir: str = flags.cache_dir_setting()


HELP = f"""Do the classes separate? A 2-D map of a stratified subsample of one split: PCA to {PCA_DIMS} dimensions
(removes noise and makes t-SNE fast), then t-SNE (scikit-learn), coloured by class.

  python -m pipeline map --features F --split test --per-class 100 [--projector DIR]

Writes cache/looking/map-<hash>.png and map-<hash>.csv (source index, class, x, y); the same
settings again are up to date. --projector DIR also writes TensorBoard Embedding Projector files
into DIR (`tensorboard --logdir DIR`, then the Projector tab): tensors.tsv (the raw features of the
subsample), metadata.tsv (class, split, source index, path), sprite.png (the images, row-major,
row i = cell i, images of any mix of sizes fitted into one cell size) and projector_config.pbtxt,
written last (it names the settings hash, which includes the image source; a rerun with the same
settings finds it and is up to date). The images come from the source checked against the
features file's data fingerprint, as does any --data given.
"""


def add_arguments(p):
    settings.add_flags(p, MapSettings)


def run(args):
    run_map(settings.from_args(MapSettings, args))


def run_map(s: MapSettings, log=print) -> Path:
    """Draw (or find up to date) the map, and the projector files with --projector; return the map."""
    s = settings.check(s)
    projector = Path(s.projector) if s.projector else None
    fs = features_from_args(s)
    split = fs.splits[s.split]
    picked = stratified(split.labels, s.per_class, s.seed)
    if len(picked) < 3:
        raise UserError(f"the {s.split} split gives only {len(picked)} rows; a map needs at least 3")
    # the images (sprite, paths) come from a source checked against the features file, before any work
    source = rows.checked_source(fs.attrs, s.data, s.cache_dir) if projector or s.data else None
    key = identity.digest({**identity.of_features(fs.attrs), "split": s.split, "per_class": s.per_class,
                           "perplexity": s.perplexity, "seed": s.seed})
    out = layout.folder(s.cache_dir, layout.LOOKING_DIR) / f"map-{key}"
    png, table = out.with_suffix(".png"), out.with_suffix(".csv")
    names = fs.class_names

    def draw():
        xy = embed_2d(split.features[picked], s.perplexity, s.seed)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["row", "source_index", "class", "x", "y"])
        for r, (x, y) in zip(picked, xy):
            writer.writerow([int(r), int(split.index[r]), names[int(split.labels[r])], f"{x:.4f}", f"{y:.4f}"])
        outputs.write_text_atomic(table, buf.getvalue())
        plot_map(png, xy, split.labels[picked], names,
                 f"{s.split}: {len(picked)} images, PCA to {PCA_DIMS} then t-SNE\n{fs.path.name}")
        log(png)

    # one lock for both files (their temporary names share the stem map-<hash>)
    outputs.produce(png, lambda: png.is_file() and table.is_file(), draw, log)
    if projector is not None:
        key = identity.digest({"map": key, "source": source.key})

        def write():
            images, paths = rows.images(fs.attrs, s.split, split.index[picked], source.path)
            meta = [{"class": names[int(split.labels[r])], "split": s.split, "source_index": int(split.index[r]),
                     "path": p or ""} for r, p in zip(picked, paths)]
            write_projector(projector, key, f"{fs.path.stem} {s.split}", split.features[picked], meta, images)
            log(projector)

        outputs.produce(projector, lambda: projector_up_to_date(projector, key), write, log)
    return png
