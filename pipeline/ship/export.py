"""The `export` command: a run's image model in each format (formats.py), checked against Keras."""
from __future__ import annotations

import datetime
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.foundation.readback import sealed, sha256_file
from pipeline.foundation import flags, layout, outputs, records, runs, settings
from pipeline.foundation.errors import UserError, first_line
from pipeline.foundation.settings import Choice, Interval, setting
from pipeline.ship.formats import CHECK_BATCH, FORMATS, OPEN, WRITE, in_batches
from pipeline.ship.models import (class_names, features_attrs, image_model, model_file, newest_run, picked_line,
                                  shipped_run, sample_test_images, temperature)


@dataclass
class ExportSettings:
    format: str = setting("savedmodel", Choice(tuple(FORMATS)), "savedmodel (for TensorFlow Serving, or "
                          "TensorFlow's saved_model loader), tflite (float32, for the TFLite / LiteRT "
                          "interpreter), keras (a .keras file, for Keras's load_model)")
    check_images: int = setting(256, Interval(int, 1), "real test images the export is checked on against the "
                                "Keras model")
    backbone: str | None = flags.moved_backbone_setting()
    weights: str | None = flags.moved_weights_setting()
    data: str | None = flags.moved_data_setting()
    cache_dir: str = flags.cache_dir_setting("exports")


HELP = f"""Export a trained image classifier for serving: a TensorFlow SavedModel, a float32 TFLite file or
a Keras file, with labels.txt beside it.

  RUN   a stage-two dense or logreg head run (cache/heads/dense-..., logreg-...): the backbone of
        its features file (rebuilt exactly, as stage three does) with the head on top (a logreg
        head as one softmax layer, equal to scikit-learn's probabilities within 1e-5), or a stage-three run
        (cache/finetune/...): its model.keras. Left out: the newest of them, whatever its kind.

Either way the exported model takes raw uint8 RGB images (N, H, W, 3) at the training images' size
(32x32 for CIFAR-10; `predict` resizes) and returns class probabilities (N, K) with the run's fitted
temperature applied. Before it is kept, each export is run on real test images of the features
file and compared with the Keras model: the largest absolute difference in any probability must
stay within {FORMATS["savedmodel"][1]} (SavedModel, Keras) or {FORMATS["tflite"][1]} (TFLite, float32).
The check's numbers go into export.json. Outputs go to <cache-dir>/exports/<run>-<format>/ (written
beside and renamed when complete; a rerun prints "up to date"). The last line printed is the model's
path.
"""


def add_arguments(p):
    p.add_argument("run_path", metavar="RUN", nargs="?", help="a run folder: cache/heads/dense-... or logreg-... "
                   "(exports backbone + head) or cache/finetune/... (its model.keras); default: the newest of them in "
                   "--cache-dir, whatever its kind")
    settings.add_flags(p, ExportSettings)


def run(args):
    s = settings.from_args(ExportSettings, args)
    run_path = args.run_path or newest_run(s.cache_dir)
    path = export_run(Path(run_path), s)
    if not args.run_path:      # said once it worked, so that a failure stays one line
        print(picked_line(run_path, s.cache_dir, "RUN"), file=sys.stderr)
    print(path)


def export_run(run_path: Path, s: ExportSettings, log=print) -> Path:
    """Export, check and keep (or find up to date) one run in one format; return the model's path."""
    s = settings.check(s)
    run = shipped_run(Path(run_path))
    source = model_file(run)
    identity = {"run": run.folder.name, "format": s.format, "model_sha256": sha256_file(source),
                "temperature": temperature(run)}
    final = layout.folder(s.cache_dir, layout.EXPORTS_DIR) / f"{run.folder.name}-{s.format}"
    name, tolerance = FORMATS[s.format]

    def done():       # an export of this very model and temperature; a damaged record is an error
        meta = final / layout.EXPORT_JSON
        return meta.is_file() and all(records.read(meta, records.EXPORT).get(k) == v for k, v in identity.items())

    outputs.produce(final, done, lambda: _export(run, s, identity, final, log), log, shown=final / name,
                    record=layout.EXPORT_JSON)
    return final / name


def _export(run: runs.Run, s: ExportSettings, identity: dict, final: Path, log):
    """Write the export into `final` (under the lock outputs.produce holds), checked against the
    Keras model on real test images first."""
    fmt, (name, tolerance) = s.format, FORMATS[s.format]
    attrs = features_attrs(run)
    model = image_model(run, attrs, s.backbone, s.weights)
    shape, dtype = tuple(model.input_shape), model.inputs[0].dtype
    if len(shape) != 4 or shape[-1] != 3 or dtype != "uint8":
        raise UserError(f"{model_file(run)} takes {dtype} {shape}, not uint8 images")
    images = sample_test_images(attrs, s.data, s.check_images)
    expected = model.predict(images, batch_size=CHECK_BATCH, verbose=0)
    with outputs.atomic_dir(final) as tmp:
        try:
            WRITE[fmt](model, tmp / name)
            got = in_batches(OPEN[fmt](tmp / name)[0], images)
        except UserError:
            raise
        except Exception as exc:     # a converter or exporter failure: say which, in one line
            raise UserError(f"{fmt} export of {run.folder.name} failed: {first_line(exc)}") from None
        diff = float(np.max(np.abs(got.astype(np.float64) - expected)))
        check = {"images": len(images), "split": "test", "source": attrs["source"],
                 "max_abs_diff": diff, "tolerance": tolerance, "passed": diff <= tolerance,
                 "same_top_class": float(np.mean(got.argmax(1) == expected.argmax(1)))}
        if not check["passed"]:
            raise UserError(f"the {fmt} export differs from the Keras model by up to {diff:.2e} in a "
                            f"probability (allowed {tolerance:.0e}) on {len(images)} test images; not kept")
        names = class_names(run)
        outputs.write_text_atomic(tmp / layout.LABELS, "".join(f"{c}\n" for c in names))
        outputs.write_text_atomic(tmp / layout.EXPORT_JSON, json.dumps(sealed({
            **identity, "file": name, "labels": layout.LABELS, "run_dir": str(run.folder),
            "kind": run.kind, "class_names": names,
            "input": {"dtype": "uint8", "shape": [None, *shape[1:]], "pixels": "RGB 0-255"},
            "output": f"class probabilities (None, {len(names)}), softmax of logits / temperature",
            "check": check, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }, tmp, layout.EXPORT_JSON, final.name), indent=2))
    log(f"{fmt}: max |probability difference| {diff:.2e} against the Keras model on {len(images)} "
        f"test images (allowed {tolerance:.0e}); labels.txt beside it")
