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


def image_model(backbone_model, head, name="image_classifier", views: int = 1):
    """The deliverable: uint8 images -> front -> pretrained network -> head -> probabilities; with
    views=2, the mean of the probabilities for the image and for its mirror image (a plain Keras
    graph: keras.ops.flip is saved with the model and loads without this package)."""
    import keras
    if views == 1:
        return keras.Model(backbone_model.input, head(backbone_model.output), name=name)
    image = keras.Input(backbone_model.input.shape[1:], dtype=backbone_model.input.dtype, name="image")
    mirrored = head(backbone_model(keras.ops.flip(image, axis=2)))
    return keras.Model(image, keras.layers.Average()([head(backbone_model(image)), mirrored]), name=name)
