"""`python -m pipeline backbones`: the backbones --backbone can name, one row each."""
from __future__ import annotations

from pipeline.backbones.table import BACKBONES, DEFAULT_BACKBONE, PREPROCESSING
from pipeline.foundation.tables import format_table


def add_arguments(p):
    pass


def run(args):
    print(backbone_table())


def backbone_table() -> str:
    """`python -m pipeline backbones`: the table, with parameter counts (each network built with
    random weights at its smallest size: the count does not depend on the size)."""
    import keras     # here, not at the top: `--help` stays quick
    rows = []
    for row in BACKBONES.values():
        params = getattr(keras.applications, row.constructor)(
            include_top=False, weights=None, pooling="avg", input_shape=(row.min_size, row.min_size, 3)
        ).count_params()
        rows.append([row.name + (" (default)" if row.name == DEFAULT_BACKBONE else ""), row.default_size,
                     row.min_size, row.width, f"{params / 1e6:.1f} M", PREPROCESSING[row.preprocessing][0],
                     row.unfreeze])
    return format_table(["backbone", "size", "min", "width", "parameters", "preprocessing", "unfreeze from"], rows)
