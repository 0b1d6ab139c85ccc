"""A sweep's grid: `--grid KEY=V1,V2 ...` parsed and checked against the head's table row, and every
combination of it over the base settings."""
from __future__ import annotations

import itertools

from pipeline.foundation.errors import UserError
from pipeline.heads import kinds


def parse_grid(head: str, items) -> dict:
    """["hidden=256,512", "lr=1e-3"] -> {"hidden": [256, 512], "lr": [0.001]}, every value checked."""
    grid = {}
    for item in items or []:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key or not values:
            raise UserError(f"--grid entries look like KEY=V1,V2; got {item!r}")
        if key in grid:
            raise UserError(f"--grid names {key} twice")
        parsed = [kinds.parse_setting(head, key, v.strip()) for v in values.split(",")]
        if key not in kinds.HEADS[head].sweep:
            raise UserError(f"a {head} sweep may vary {', '.join(kinds.HEADS[head].sweep)}; not {key}")
        grid[key] = list(dict.fromkeys(parsed))       # drop repeats, keep order
    return grid


def configurations(head: str, base: dict, grid: dict) -> list[dict]:
    """Every combination of the grid over `base`; combinations that are the same run appear once."""
    keys, out = list(grid), []
    for combo in itertools.product(*(grid[k] for k in keys)):
        config = kinds.canonical(head, {**base, **dict(zip(keys, combo))})
        if config not in out:
            out.append(config)
    return out
