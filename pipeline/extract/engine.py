"""How stage one's work is cut up and run: the driver's fixed plan of shards, and the local engine.

A shard is a row range of one split, starting on a fingerprint block boundary, so every shard
hashes whole blocks and the data fingerprint does not depend on the layout. The plan depends only
on the split sizes and --shard-rows; a resumed run recomputes the blocks the partial file does not
mark done. The local engine runs the shards in this process; ``pipeline.extract.ray_engine`` runs the same
shards on a Ray actor pool. Both hand rows to the driver, which alone writes the file.
"""
from __future__ import annotations

import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from pipeline.backbones.build import build_backbone
from pipeline.backbones.folding import fast_extractor
from pipeline.extract.views import image_views
from pipeline.foundation.settings import Checked, Interval
from pipeline.sources import digest
from pipeline.sources.images import Split


DEFAULT_SHARD_ROWS = 4096
# Test-only fault injection: "SPLIT:LO" makes the worker that starts that shard die (os._exit);
# with ":once=PATH" only if PATH does not exist yet (it is created first), so a retry succeeds.
# Several, comma-separated.
CRASH_ENV = "PIPELINE_TEST_CRASH_SHARD"
# Test-only: "N" makes the driver, once it has written N rows or more, say "paused after M rows" on
# stderr and wait for a signal, so a test interrupts or kills it at a known row whatever the
# machine's speed (the engines keep computing meanwhile, as they would while a user's Ctrl-C travels).
PAUSE_ENV = "PIPELINE_TEST_PAUSE_AFTER_ROWS"


@dataclass(frozen=True)
class Shard:
    split: str
    lo: int          # first row, a multiple of digest.BLOCK_ROWS
    hi: int

    def __str__(self):
        return f"{self.split}[{self.lo}:{self.hi}]"


def parse_shard_rows(value) -> int:
    """A --shard-rows value: a positive multiple of the fingerprint block, so that every shard hashes
    whole blocks (a ValueError otherwise)."""
    rows = Interval(int, 1).parse(value)
    if rows % digest.BLOCK_ROWS:
        raise ValueError(value)
    return rows


SHARD_ROWS = Checked(parse_shard_rows, f"a positive multiple of {digest.BLOCK_ROWS} (the fingerprint block)", "N")


def plan(sizes: dict[str, int], shard_rows: int) -> list[Shard]:
    parse_shard_rows(shard_rows)     # checked by the command's settings already: a ValueError here is a bug
    return [Shard(name, lo, min(lo + shard_rows, n)) for name, n in sizes.items() for lo in range(0, n, shard_rows)]


def missing(shards: list[Shard], done_rows: dict[str, np.ndarray]) -> list[Shard]:
    """The part of each shard still to compute: from its first block with a row not done (blocks
    are written in order within a shard, so the rest of a shard after a gap is not done either)."""
    todo = []
    for shard in shards:
        done = done_rows[shard.split][shard.lo:shard.hi]
        if done.all():
            continue
        first_gap = int(np.argmin(done))
        todo.append(Shard(shard.split, shard.lo + first_gap // digest.BLOCK_ROWS * digest.BLOCK_ROWS, shard.hi))
    return todo


@dataclass(frozen=True)
class ExtractorSpec:
    """Everything a worker needs to build the same extractor as the driver would."""
    backbone: str
    weights: str | None
    size: int | None
    seed: int
    precision: str
    views: int = 1         # 2: rows are (n, 2, D), each image's embedding and its mirror's

    def build(self):
        """(extract: images -> float32 rows, Backbone). Any image size: resized in the graph."""
        backbone = build_backbone(self.backbone, self.weights, self.size, (None, None, 3), self.seed)
        extract = fast_extractor(backbone.model, self.precision)
        if self.views == 1:
            return extract, backbone
        return (lambda images: np.stack([extract(v) for v in image_views(images, self.views)], axis=1)), backbone


def maybe_crash(shard: Shard, spec: str | None):
    """The test-only hook of CRASH_ENV, comma-separated (the driver reads it and passes it on)."""
    for item in (spec or "").split(","):
        target, _, once = item.partition(":once=")
        if target != f"{shard.split}:{shard.lo}":
            continue
        if once:
            if os.path.exists(once):
                continue
            open(once, "w").close()
        os._exit(17)


def maybe_pause(written: int):
    """The test-only hook of PAUSE_ENV, called by the driver after each write."""
    after = os.environ.get(PAUSE_ENV)
    if after and written >= int(after):
        os.environ.pop(PAUSE_ENV)          # once
        print(f"paused after {written} rows", file=sys.stderr, flush=True)
        while True:
            signal.pause()


def shard_batches(extract, part: Split, first_row: int, batch_size: int):
    """Yield (row, features, {block: digest}) batch by batch over `part` (a shard's rows, the first
    being row `first_row` of its split). The next batch decodes in a thread while this one runs."""
    hasher = digest.BlockHasher(part, 0)
    first_block = first_row // digest.BLOCK_ROWS
    starts = list(range(0, len(part), batch_size))
    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(part.read, 0, batch_size)
        for lo in starts:
            images = pending.result()
            if lo + batch_size < len(part):
                pending = reader.submit(part.read, lo + batch_size, lo + 2 * batch_size)
            features = extract(images)
            blocks = {first_block + k: digest for k, digest in hasher.feed(images).items()}
            yield first_row + lo, features, blocks


def run_local(todo: list[Shard], splits: dict, writer, spec: ExtractorSpec, batch_size: int, progress) -> None:
    """The in-process engine: one extractor, the shards in plan order, rows written as they come."""
    extract, _ = spec.build()
    written = 0
    for i, shard in enumerate(todo):
        part = splits[shard.split].select(np.arange(shard.lo, shard.hi))
        for row, features, blocks in shard_batches(extract, part, shard.lo, batch_size):
            writer.write(shard.split, row, features, blocks)
            written += len(features)
            progress.update(len(features), f"shard {i + 1}/{len(todo)}")
            maybe_pause(written)
