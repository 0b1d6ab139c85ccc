"""Stage one's memory estimate: an input size the machine cannot hold is refused before anything is built."""
from __future__ import annotations

from pathlib import Path

from pipeline.foundation.errors import UserError

# Peak working memory of one batch through a convolutional backbone, per input pixel, in bytes:
# the float32 image plus the widest early activations (InceptionV3: 64 channels at half the side,
# alive together with their inputs) come to about 100; measured 0.6 GB for 64 images at 299x299.
BYTES_PER_PIXEL = 100


def _available_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(size: int, batch_size: int):
    """Refuse an input size the machine cannot hold, with the estimate, before anything is built."""
    need = BYTES_PER_PIXEL * size * size * batch_size
    have = _available_memory()
    if have is not None and need > have:
        raise UserError(f"--size {size} with --batch-size {batch_size} needs about {need / 2**30:,.1f} GiB of "
                        f"memory per batch, and {have / 2**30:,.1f} GiB are available; lower --size or "
                        "--batch-size")
