"""Which backbone and which weights, and their identity: a table name or a .keras file, ImageNet, random
(seeded) or a local weights file, each recorded with what makes it reproducible (a file's sha256)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.backbones.table import BACKBONES, Entry
from pipeline.foundation.errors import UserError
from pipeline.foundation.readback import sha256_file


@dataclass(frozen=True)
class Weights:
    """Which weights a network was built with, as structured attributes (stored in every features
    file, hashed into its name; the inverse, rebuilding the network, reads these fields). What
    "imagenet" is for each backbone, the table's PretrainedWeights says."""
    source: str          # "imagenet" (Keras's download), "none" (random init) or "file"
    seed: int = -1       # random init seed (source "none")
    sha256: str = ""     # of the weights file or .keras model (source "file")

    def attrs(self) -> dict:
        return {"weights_source": self.source, "weights_seed": self.seed, "weights_sha256": self.sha256}

    @classmethod
    def from_attrs(cls, attrs: dict) -> "Weights":
        return cls(str(attrs["weights_source"]), int(attrs["weights_seed"]), str(attrs["weights_sha256"]))

    def __str__(self):
        return {"imagenet": "imagenet", "none": f"none (random init, seed {self.seed})",
                "file": f"file sha256:{self.sha256}"}[self.source]


def weights_identity(weights: str, seed: int) -> Weights:
    """--weights imagenet|none|PATH -> what the numbers depend on."""
    if weights == "none":
        return Weights("none", seed)
    if weights == "imagenet":
        return Weights("imagenet")
    if not Path(weights).is_file():
        raise UserError(f"--weights must be imagenet, none or a weights file; {weights} is not a file")
    return Weights("file", sha256=sha256_file(Path(weights)))


def resolve_backbone(backbone: str) -> Entry | Path:
    """A table entry by name, or the path of a saved .keras model."""
    if backbone in BACKBONES:
        return BACKBONES[backbone]
    path = Path(backbone)
    if path.suffix != ".keras" or not path.exists():
        raise UserError(f"--backbone must be one of {', '.join(BACKBONES)} or a saved .keras model file; "
                        f"{path} does not exist" if path.suffix == ".keras" else
                        f"--backbone must be one of {', '.join(BACKBONES)} or a saved .keras model file, "
                        f"got {backbone!r}")
    return path
