"""Export a trained image classifier for serving: a TensorFlow SavedModel, a float32 TFLite file or
a Keras file, with labels.txt beside it.

  RUN   a stage-two dense head run (cache/heads/dense-...): the backbone of its features file
        (rebuilt exactly, as stage three does) with the head on top, or a stage-three run
        (cache/finetune/...): its model.keras.

Either way the exported model takes raw uint8 RGB images (N, H, W, 3) at the training images' size
(32x32 for CIFAR-10; `predict` resizes) and returns class probabilities (N, K) with the run's fitted
temperature applied (pipeline.ship.calibration). Before it is kept, each export is run on real test
images of the features file and compared with the Keras model: the largest absolute difference in
any probability must stay within 1e-4 (SavedModel, Keras) or 1e-3 (TFLite, float32). The check's
numbers go into export.json. Outputs go to <cache-dir>/exports/<run>-<format>/ (written beside and
renamed when complete; a rerun prints "up to date"). The last line printed is the model's path.
"""
from __future__ import annotations

import datetime
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from pipeline.foundation import flags, outputs, records
from pipeline import store
from pipeline.foundation.errors import UserError, first_line

# format -> (file or folder name in the export, largest allowed absolute probability difference)
FORMATS = {"savedmodel": ("saved_model", 1e-4), "tflite": ("model.tflite", 1e-3), "keras": (records.MODEL, 1e-4)}
CHECK_BATCH = 32


def add_arguments(p):
    p.add_argument("run_path", metavar="RUN", nargs="?", help="a run folder: cache/heads/dense-... (exports backbone "
                   "+ head) or cache/finetune/... (its model.keras); default: the newest of them in --cache-dir")
    p.add_argument("--format", default="savedmodel", choices=tuple(FORMATS),
                   help="savedmodel (TensorFlow Serving, tf.saved_model.load), tflite (float32, "
                        "tf.lite.Interpreter / LiteRT), keras (keras.models.load_model); default: savedmodel")
    p.add_argument("--check-images", type=flags.positive_int, default=256, metavar="N",
                   help="real test images the export is checked on against the Keras model (default: 256)")
    flags.add_moved_backbone(p)
    p.add_argument("--data", metavar="PATH", help="the image source, if it moved since the features file was made")
    p.add_argument("--cache-dir", default="cache", metavar="DIR", help="where exports go (default: cache)")


def run(args):
    run_path = args.run_path or newest_run(args.cache_dir)
    path = export_run(Path(run_path), args.format, cache_dir=args.cache_dir, n_images=args.check_images,
                      backbone=args.backbone, weights=args.weights, data=args.data)
    if not args.run_path:      # said once it worked, so that a failure stays one line
        print(picked_line(run_path, args.cache_dir, "RUN"), file=sys.stderr)
    print(path)


def newest_run(cache_dir) -> Path:
    """What `export` without RUN and `predict` without --model take: the newest finished run with an
    image model (a dense head run, composed with its backbone, or a fine-tune run); run.json is
    written last, so its time is the run's."""
    found = [j.parent for kind in (records.HEADS, records.FINETUNE)
             for j in records.folder(cache_dir, kind).glob(f"*/{records.RUN_JSON}") if (j.parent / records.MODEL).is_file()]
    if not found:
        raise UserError(f"no dense head or fine-tune run in {cache_dir}; run `head` first, or name a run")
    return max(found, key=lambda d: (d / records.RUN_JSON).stat().st_mtime)


def picked_line(run_dir, cache_dir, choose: str) -> str:
    return f"model: {run_dir} (the newest run in {cache_dir}; {choose} chooses another)"


# ---------------------------------------------------------------- the run and its Keras model

def read_run(path: Path) -> tuple[Path, dict]:
    """(run folder, its run.json) for a run folder, or its run.json or model.keras."""
    run_dir = (path if path.is_dir() else path.parent).absolute()
    run_json = run_dir / records.RUN_JSON
    if not run_json.is_file():
        raise UserError(f"{path} is not a run folder (no run.json); give cache/heads/<run> or cache/finetune/<run>")
    info = records.read_run(run_dir)
    if info.get("stage") != "finetune" and not (run_dir / records.MODEL).is_file():
        raise UserError(f"{run_dir} is a {info.get('head', 'non-Keras')} head run; only dense head runs and "
                        "stage-three runs export or predict (they are Keras models)")
    return run_dir, info


def features_attrs(info: dict) -> dict:
    path = Path(info["features"]["path"])
    attrs = store.read_rows(path, splits=()).attrs
    if attrs["settings_hash"] != info["features"]["settings_hash"]:
        raise UserError(f"{path} is no longer the features file the run was trained on "
                        f"({info['features']['settings_hash']}); rerun it")
    return attrs


def image_model(run_dir: Path, info: dict, attrs: dict, backbone=None, weights=None):
    """The Keras model to export: uint8 images -> probabilities, temperature applied."""
    from pipeline.ship.calibration import apply_temperature
    from pipeline.ship.predict import load_keras_file
    if info.get("stage") == "finetune":
        model = load_keras_file(run_dir / records.MODEL, "fine-tuned model", "finetune")
    else:
        from pipeline.backbones.rebuild import rebuild_backbone
        from pipeline.finetune.surgery import image_model as stack
        bb = rebuild_backbone(attrs, backbone, weights)
        model = stack(bb.model, load_keras_file(run_dir / records.MODEL, "head", "head"))
    return apply_temperature(model, temperature(info))


def temperature(info: dict) -> float:
    return float(info.get("calibration", {}).get("temperature", 1.0))


def class_names(info: dict) -> list[str]:
    return list(info.get("class_names") or info["features"]["class_names"])


def sample_test_images(attrs: dict, data_path, n: int) -> np.ndarray:
    """n real test images of the features file, spread over the split (it is ordered by class), at
    the size the model takes: an image folder's images of other sizes are resized as predict
    resizes them."""
    from PIL import Image
    from pipeline.sources.rows import load_splits
    from pipeline.ship.predict import to_size
    test = load_splits(attrs, data_path)["test"]
    images = test.select(np.unique(np.linspace(0, len(test) - 1, min(n, len(test))).astype(int))).read()
    size = tuple(attrs["image_shape"][:2])
    return np.stack([x if x.shape[:2] == size else to_size(Image.fromarray(x), size) for x in images])


# ---------------------------------------------------------------- writing and reading each format

def _in_batches(fn, images: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(fn(images[i:i + CHECK_BATCH])) for i in range(0, len(images), CHECK_BATCH)])


def _write_savedmodel(model, path: Path):
    model.export(str(path), format="tf_saved_model", verbose=False)


def open_savedmodel(path: Path):
    """(uint8 batch -> probabilities, input shape, classes, input dtype) of a SavedModel."""
    import tensorflow as tf
    loaded = tf.saved_model.load(str(path))
    spec = loaded.serve.input_signature[0]
    n = loaded.serve.concrete_functions[0].structured_outputs.shape[-1]
    return (lambda batch: loaded.serve(tf.constant(batch)).numpy()), tuple(spec.shape), n, spec.dtype.name


def _write_tflite(model, path: Path):
    import tensorflow as tf
    scratch = path.with_name(path.name + ".saved_model")
    try:
        _write_savedmodel(model, scratch)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(scratch))   # float32: no optimizations
        path.write_bytes(converter.convert())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def open_tflite(path: Path):
    """(uint8 batch -> probabilities, input shape, classes, input dtype) of a TFLite file."""
    import warnings
    import tensorflow as tf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # tf.lite.Interpreter's notice that LiteRT will replace it
        interpreter = tf.lite.Interpreter(model_path=str(path))
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

    def call(batch):
        interpreter.resize_tensor_input(inp["index"], batch.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], batch)
        interpreter.invoke()
        return interpreter.get_tensor(out["index"]).copy()
    return call, (None, *inp["shape"][1:]), int(out["shape"][-1]), np.dtype(inp["dtype"]).name


def _write_keras(model, path: Path):
    model.save(path)


def open_keras(path: Path):
    """(uint8 batch -> probabilities, input shape, classes, input dtype) of an exported Keras file."""
    import keras
    model = keras.models.load_model(path, compile=False)
    return (lambda batch: model.predict(batch, batch_size=CHECK_BATCH, verbose=0)), tuple(model.input_shape), \
        model.output_shape[-1], model.inputs[0].dtype


_WRITE = {"savedmodel": _write_savedmodel, "tflite": _write_tflite, "keras": _write_keras}
# Each format read back as predict reads it: (callable, input shape, classes, input dtype).
OPEN = {"savedmodel": open_savedmodel, "tflite": open_tflite, "keras": open_keras}


# ---------------------------------------------------------------- the export

def export_run(run_path: Path, fmt: str, cache_dir="cache", n_images: int = 256, backbone=None, weights=None,
               data=None, log=print) -> Path:
    """Export, check and keep (or find up to date) one run in one format; return the model's path."""
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    from pipeline.backbones.weights import sha256_file
    run_dir, info = read_run(Path(run_path))
    source = run_dir / records.MODEL
    identity = {"run": run_dir.name, "format": fmt, "model_sha256": sha256_file(source),
                "temperature": temperature(info)}
    final = records.folder(cache_dir, records.EXPORTS) / f"{run_dir.name}-{fmt}"
    name, tolerance = FORMATS[fmt]
    if _up_to_date(final, identity):
        log(f"up to date: {final / name}")
        return final / name

    attrs = features_attrs(info)
    model = image_model(run_dir, info, attrs, backbone, weights)
    shape, dtype = tuple(model.input_shape), model.inputs[0].dtype
    if len(shape) != 4 or shape[-1] != 3 or dtype != "uint8":
        raise UserError(f"{source} takes {dtype} {shape}, not uint8 images")
    images = sample_test_images(attrs, data, n_images)
    expected = model.predict(images, batch_size=CHECK_BATCH, verbose=0)

    final.parent.mkdir(parents=True, exist_ok=True)
    with outputs.Lock(final), outputs.atomic_dir(final) as tmp:
        try:
            _WRITE[fmt](model, tmp / name)
            got = _in_batches(OPEN[fmt](tmp / name)[0], images)
        except UserError:
            raise
        except Exception as exc:     # a converter or exporter failure: say which, in one line
            raise UserError(f"{fmt} export of {run_dir.name} failed: {first_line(exc)}") from None
        diff = float(np.max(np.abs(got.astype(np.float64) - expected)))
        check = {"images": len(images), "split": "test", "source": attrs["source"],
                 "max_abs_diff": diff, "tolerance": tolerance, "passed": diff <= tolerance,
                 "same_top_class": float(np.mean(got.argmax(1) == expected.argmax(1)))}
        if not check["passed"]:
            raise UserError(f"the {fmt} export differs from the Keras model by up to {diff:.2e} in a "
                            f"probability (allowed {tolerance:.0e}) on {len(images)} test images; not kept")
        names = class_names(info)
        outputs.write_text_atomic(tmp / records.LABELS, "".join(f"{c}\n" for c in names))
        outputs.write_text_atomic(tmp / records.EXPORT_JSON, json.dumps({
            **identity, "file": name, "labels": records.LABELS, "run_dir": str(run_dir),
            "stage": info.get("stage", "head"), "class_names": names,
            "input": {"dtype": "uint8", "shape": [None, *shape[1:]], "pixels": "RGB 0-255"},
            "output": f"class probabilities (None, {len(names)}), softmax of logits / temperature",
            "check": check, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }, indent=2))
    log(f"{fmt}: max |probability difference| {diff:.2e} against the Keras model on {len(images)} "
        f"test images (allowed {tolerance:.0e}); labels.txt beside it")
    return final / name


def _up_to_date(final: Path, identity: dict) -> bool:
    meta = final / records.EXPORT_JSON
    if not meta.is_file():
        return False
    found = records.read(meta, records.EXPORT)
    return all(found.get(k) == v for k, v in identity.items())
