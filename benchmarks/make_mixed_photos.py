"""A folder of photos of mixed sizes from CIFAR-10 JPEGs: each image upscaled (bicubic) to a random
width and height between 48 and 640 px, so the folder looks like a user's photos (no two sizes
alike, portrait and landscape) while its labels stay CIFAR-10's. Used by bench_small_heads.py.

    python benchmarks/make_mixed_photos.py CIFAR_JPG_DIR OUT_DIR [--train 150] [--test 50]

OUT_DIR/train/<class>/ takes `--train` images per class from CIFAR's train split, from index 1000,
and OUT_DIR/test/<class>/ `--test` from its test split, from index 100: not the images `features
--limit 1000` takes (the first 100 of each). Seeded: the same command writes the same files.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--train", type=int, default=150)
    p.add_argument("--test", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    rng = np.random.default_rng(a.seed)
    for split, per_class, skip in (("train", a.train, 1000), ("test", a.test, 100)):
        for class_dir in sorted((a.source / split).iterdir()):
            files = sorted(class_dir.glob("*.jpg"))[skip:skip + per_class]
            out = a.out / split / class_dir.name
            out.mkdir(parents=True, exist_ok=True)
            for f in files:
                w, h = (int(v) for v in rng.integers(48, 641, 2))
                Image.open(f).convert("RGB").resize((w, h), Image.BICUBIC).save(out / f.name, quality=92)
    print(a.out)


if __name__ == "__main__":
    main()
