"""The data fingerprint: fixed blocks of BLOCK_ROWS images hashed on their own, so any batch or shard
layout (and any worker) computes the same blocks, and the blocks combine to one hash."""
from __future__ import annotations

import hashlib

import numpy as np

from pipeline.sources.images import Split


BLOCK_ROWS = 128      # images per fingerprint block (also the HDF5 chunk): shards are whole blocks


def block_digest(images, labels: np.ndarray, index: np.ndarray) -> bytes:
    """sha256 of one block's pixels (with each image's shape), labels and indices."""
    h = hashlib.sha256()
    for img in images:
        h.update(str(img.shape).encode())
        h.update(np.ascontiguousarray(img).tobytes())
    h.update(np.asarray(labels, np.uint8).tobytes())
    h.update(np.asarray(index, np.int64).tobytes())
    return h.digest()


def combine_digests(blocks: dict[str, list[bytes]], sizes: dict[str, int]) -> str:
    """The data fingerprint from every split's block digests, in order."""
    h = hashlib.sha256()
    for name in sorted(blocks):
        h.update(f"{name}:{sizes[name]}:{BLOCK_ROWS}".encode())
        for digest in blocks[name]:
            h.update(digest)
    return h.hexdigest()


class BlockHasher:
    """Feeds a split's rows in order, from a block boundary; hands back each block's digest as
    soon as its last row has been fed. Workers hash exactly the rows they extract."""

    def __init__(self, split: Split, start: int):
        assert start % BLOCK_ROWS == 0, "shards start on a block boundary"
        self.split, self.next, self.pending = split, start, []

    def feed(self, images) -> dict[int, bytes]:
        """`images`: the next rows, in order. Returns {block number: digest} of completed blocks."""
        done = {}
        for img in images:
            self.pending.append(img)
            self.next += 1
            if self.next % BLOCK_ROWS == 0 or self.next == len(self.split):
                lo = self.next - len(self.pending)
                done[lo // BLOCK_ROWS] = block_digest(self.pending, self.split.y[lo:self.next],
                                                      self.split.index[lo:self.next])
                self.pending = []
        return done


def fingerprint(splits: dict[str, Split]) -> str:
    """The data fingerprint of in-memory splits: equal iff the inputs are equal, and equal to the
    one stage one assembles from its workers' blocks."""
    blocks = {}
    for name, split in splits.items():
        hasher = BlockHasher(split, 0)
        blocks[name] = []
        for lo in range(0, len(split), BLOCK_ROWS):
            blocks[name] += hasher.feed(split.read(lo, lo + BLOCK_ROWS)).values()
    return combine_digests(blocks, {k: len(v) for k, v in splits.items()})
