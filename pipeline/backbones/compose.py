"""Keras models from files and from parts: a .keras file loaded with a user's mistake as one error
line, and the image model (backbone, then head) that both stage three and shipping deliver."""
from __future__ import annotations

from pathlib import Path

from pipeline.foundation.errors import UserError, first_line


def load_keras_file(path: Path, what: str, make: str):
    """keras.models.load_model, with a missing or unreadable file as a UserError naming `what`
    it should have been and the `make` target that produces it."""
    import keras
    if not path.exists():
        raise UserError(f"{what} file {path} does not exist; run `make {make}` first")
    if not path.is_file():
        raise UserError(f"{what} {path} is a folder, not a .keras file")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:
        raise UserError(f"cannot load {what} {path}: "
                        f"{first_line(exc)}") from None


def image_model(backbone_model, head, name="image_classifier"):
    """The deliverable: uint8 images -> front -> pretrained network -> head -> probabilities."""
    import keras
    probabilities = head(backbone_model.output)
    return keras.Model(backbone_model.input, probabilities, name=name)
