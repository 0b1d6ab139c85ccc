"""The network a features file was made with, rebuilt from its attributes: the same row, weights
origin and input size, or the same backbone/weights file (found where the features file recorded it,
or where --backbone/--weights says when it moved), checked by its sha256."""
from __future__ import annotations

from pathlib import Path

from pipeline.backbones.build import build_backbone
from pipeline.backbones.folding import fast_extractor
from pipeline.backbones.table import BACKBONES
from pipeline.backbones.weights import Weights
from pipeline.foundation.errors import UserError


def rebuild_backbone(attrs: dict, backbone_file: str | None = None, weights_file: str | None = None,
                     image_shape=None):
    """The network a features file was made with, from its attributes: a named backbone with the
    same weights origin and input size; a weights or .keras file is found where the features file
    recorded it (or where --weights/--backbone says, when it moved) and checked by its sha256.
    `image_shape`: its input (default: the file's first image's; (None, None, 3) takes any size,
    as stage one does)."""
    if "weights_source" not in attrs:
        raise UserError("the features file predates structured weight attributes; rerun `make features`")
    recorded, shape = Weights.from_attrs(attrs), tuple(image_shape or attrs["image_shape"])
    named = attrs["backbone"] in BACKBONES
    if named and backbone_file is not None:       # a flag that cannot apply is refused, never ignored
        raise UserError(f"--backbone {backbone_file}: the features were made with the named backbone "
                        f"{attrs['backbone']}, not a backbone file; leave --backbone out")
    if weights_file is not None and (not named or recorded.source != "file"):
        raise UserError(f"--weights {weights_file}: the features were made with "
                        + (f"{recorded} weights" if named else f"the backbone file {attrs['backbone']}, whose "
                           "weights are inside it") + ", not a weights file; leave --weights out")
    if named:
        flag, given = "--weights", weights_file
        path = {"imagenet": "imagenet", "none": "none"}.get(recorded.source) or \
            _file_of(attrs, "weights_file", given, f"a local {attrs['backbone']} weights file", flag)
        bb = build_backbone(attrs["backbone"], path, int(attrs["input_size"]), shape, max(recorded.seed, 0))
    else:
        flag, given = "--backbone", backbone_file
        path = _file_of(attrs, "backbone_file", given, f"the backbone file {attrs['backbone']}", flag)
        bb = build_backbone(path, None, None, shape)
    if bb.weights != recorded:
        raise UserError(f"{flag} {path} is not the one the features were made with ({recorded})" if given else
                        f"{path} changed since the features were made with it ({recorded}); pass {flag} PATH "
                        "to the original")
    if (bb.width, bb.input_size) != (attrs["feature_width"], attrs["input_size"]):
        raise UserError(f"rebuilt backbone gives width {bb.width} at {bb.input_size}px; the features file "
                        f"says {attrs['feature_width']} at {attrs['input_size']}px")
    return bb


def _file_of(attrs: dict, key: str, given: str | None, what: str, flag: str) -> str:
    """The flag's file when given, else the absolute path the features file recorded under `key`."""
    if given is not None:
        return given
    recorded = attrs.get(key)
    if not recorded:
        raise UserError(f"the features file was made with {what}; pass {flag} PATH to it")
    if not Path(recorded).is_file():
        raise UserError(f"the features file was made with {recorded}, which is no longer there; "
                        f"pass {flag} PATH to it")
    return recorded


def row_extractor(attrs: dict, backbone_file: str | None = None, weights_file: str | None = None):
    """images (a uint8 batch, or a list of any sizes) -> their rows exactly as stage one computed
    them: the rebuilt network in the file's precision, each image resized alone by the network's
    own resize layer (engine.ExtractorSpec), never to another image's size first."""
    bb = rebuild_backbone(attrs, backbone_file, weights_file, image_shape=(None, None, 3))
    return fast_extractor(bb.model, attrs["precision"])
