"""The `backbones` command: the backbone table printed, one row each."""
from __future__ import annotations

from pipeline.backbones.table import BACKBONES, DEFAULT_BACKBONE, PREPROCESSING
from pipeline.foundation.tables import format_table


HELP = """The backbones --backbone can name, one row each: input size, feature width, parameters,
preprocessing and the default --unfreeze-from block of `finetune`.
"""


def add_arguments(p):
    pass


def run(args):
    print(backbone_table())


def backbone_table() -> str:
    """`python -m pipeline backbones`: the table, with parameter counts (each network built with
    random weights at its smallest size: the count does not depend on the size)."""
    import keras     # here, not at the top: `--help` stays quick
    rows = []
    for entry in BACKBONES.values():
        arch = entry.architecture
        params = getattr(keras.applications, arch.constructor)(
            include_top=False, weights=None, pooling="avg", input_shape=(arch.min_size, arch.min_size, 3)
        ).count_params()
        rows.append([entry.name + (" (default)" if entry.name == DEFAULT_BACKBONE else ""), arch.default_size,
                     arch.min_size, arch.width, f"{params / 1e6:.1f} M", PREPROCESSING[arch.preprocessing][0],
                     entry.policy.unfreeze])
    return format_table(["backbone", "size", "min", "width", "parameters", "preprocessing", "unfreeze from"], rows)
