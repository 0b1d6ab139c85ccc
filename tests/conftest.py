"""Shared test fixtures and helpers: paths to the real data in ../shared, stage-one files built once
per session, synthetic features files, the CLI in-process and in a subprocess, a small full disk, and
the check of the `slow` marker's rule (declared in pyproject.toml)."""
from pipeline.foundation import identity
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# pytest-xdist's workers split the cores between them: OpenMP threads beyond a worker's share spin while they
# wait for a core (`map`'s t-SNE: 10 s instead of 2 on a busy 2-core machine). Set before numpy or sklearn load.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS",
                          str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CIFAR_JPG = SHARED / "data" / "cifar10-jpg"
PRETRAINED = SHARED / "models" / "efficientnet_lite0_imagenet.keras"
# ../shared/models/README.md: with >= 100 training images per class, logistic regression reaches
# >= 0.65 test accuracy and a dense head >= 0.55 on this backbone's features; random features stay far below.
REAL_LIMIT = 600             # 60 per class -> 54 train + 6 val per class, 60 test per class
LOGREG_FLOOR, DENSE_FLOOR = 0.65, 0.55
# How far stage-one features in each precision may lie from the float32 computation, as a fraction of
# the largest |feature|: `--precision auto` is bfloat16 on CPUs with AVX512-BF16 or AMX, float16 on a
# GPU. Measured on the tiny backbone (2-core Xeon with AMX, 2026-11-30): float32 4e-7, float16 4e-4,
# bfloat16 7e-3; the bounds leave about 3x.
PRECISION_TOLERANCE = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 2e-2}


def assert_close_at(precision: str, got, expected):
    """Features computed in `precision` match float32 ones within that precision's tolerance."""
    expected = np.asarray(expected)
    np.testing.assert_allclose(got, expected, rtol=0,
                               atol=PRECISION_TOLERANCE[precision] * np.abs(expected).max(), err_msg=precision)


def require_real_images():
    if not CIFAR_JPG.is_dir():
        pytest.skip(f"real CIFAR-10 JPEGs not found at {CIFAR_JPG} (see ../shared/data/README.md)")


def require_pretrained():
    require_real_images()
    if not PRETRAINED.is_file():
        pytest.skip(f"pretrained backbone not found at {PRETRAINED} (see ../shared/models/README.md)")


@pytest.fixture(scope="session")
def real_features(tmp_path_factory) -> Path:
    """Stage one with the real ImageNet-pretrained backbone on a balanced subset of real CIFAR-10."""
    require_pretrained()
    from pipeline.extract.features import FeatureSettings, run_features
    cache = tmp_path_factory.mktemp("real-cache")
    return run_features(FeatureSettings(data=str(CIFAR_JPG), backbone=str(PRETRAINED), limit=REAL_LIMIT,
                                        cache_dir=str(cache)), log=lambda *a: None)


def copy_cifar(root: Path, train_per_class: int, test_per_class: int, classes=None) -> Path:
    """train/<class>/ and test/<class>/ holding the first JPEGs of each class of the real CIFAR-10 tree
    (those `--limit` picks), copied under the same names."""
    for c in classes or sorted(p.name for p in (CIFAR_JPG / "train").iterdir()):
        for part, n in (("train", train_per_class), ("test", test_per_class)):
            (root / part / c).mkdir(parents=True)
            for i in range(n):
                shutil.copy(CIFAR_JPG / part / c / f"{i:04d}.jpg", root / part / c / f"{i:04d}.jpg")
    return root


@pytest.fixture(scope="session")
def small_cifar(tmp_path_factory) -> Path:
    """4 train and 4 test real CIFAR-10 JPEGs per class, copied: every command that lists or
    fingerprints the source then reads 80 files, not the whole tree's 60,000 (1.1 s of CPU each time)."""
    require_real_images()
    return copy_cifar(tmp_path_factory.mktemp("small-cifar") / "cifar10-jpg", 4, 4)


@pytest.fixture(scope="session")
def tiny_inception_features(small_cifar, tmp_path_factory) -> Path:
    """Stage one with a random-weight InceptionV3 at 75x75 on small_cifar's 80 real images (train 30,
    val 10, test 40; fast; for plumbing tests)."""
    from pipeline.extract.features import FeatureSettings, run_features
    cache = tmp_path_factory.mktemp("tiny-cache")
    return run_features(FeatureSettings(data=str(small_cifar), weights="none", size=75,
                                        precision="float32", cache_dir=str(cache)), log=lambda *a: None)


# ---------------------------------------------------------------- synthetic datasets in each format

def synthetic_cifar(n_train=50, n_test=20, seed=0):
    """Random 32x32 RGB images with labels cycling 0..9 (every class present in every batch)."""
    rng = np.random.default_rng(seed)
    train_x = rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8)
    test_x = rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8)
    return train_x, np.arange(n_train) % 10, test_x, np.arange(n_test) % 10


def write_batches(folder: Path, train_x, train_y, test_x, test_y) -> Path:
    """The cifar-10-batches-py layout: pickled dicts, b"data" uint8 (N, 3072) channel-major."""
    import pickle
    folder.mkdir(parents=True, exist_ok=True)

    def dump(name, x, y):
        rows = x.transpose(0, 3, 1, 2).reshape(len(x), 3072)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rows, b"labels": [int(v) for v in y], b"batch_label": name.encode()}, f)
    for i, part in enumerate(np.array_split(np.arange(len(train_x)), 5)):
        dump(f"data_batch_{i + 1}", train_x[part], train_y[part])
    dump("test_batch", test_x, test_y)
    with open(folder / "batches.meta", "wb") as f:
        from pipeline.sources.cifar import CIFAR10_CLASSES
        pickle.dump({b"label_names": [c.encode() for c in CIFAR10_CLASSES]}, f)
    return folder


def write_image_tree(root: Path, train_x, train_y, test_x, test_y, classes) -> Path:
    """train/<class>/NNNN.png and test/<class>/NNNN.png (PNG: lossless, so pixels round-trip)."""
    from PIL import Image
    for split, xs, ys in (("train", train_x, train_y), ("test", test_x, test_y)):
        for i, (x, y) in enumerate(zip(xs, ys)):
            d = root / split / classes[y]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x).save(d / f"{i:04d}.png")
    return root


@pytest.fixture
def batches_dir(tmp_path) -> Path:
    return write_batches(tmp_path / "cifar-10-batches-py", *synthetic_cifar())


@pytest.fixture(scope="session")
def planted(tmp_path_factory):
    """(features path, data root, FeatureSet): real images with exact train copies planted in test
    (build_planted), for the looking-at-results tests."""
    from pipeline.store import read_rows
    path, root = build_planted(tmp_path_factory.mktemp("planted"))
    return path, root, read_rows(path)


# ---------------------------------------------------------------- a tiny backbone (fast stage-one runs)

def save_tiny_backbone(path: Path, size: int = 32) -> Path:
    """A small conv net saved as a .keras backbone file to the --backbone contract (RGB 0-255 pixels
    in, a 32-wide feature vector out; blocks named like EfficientNet's, so stage three can cut it):
    the fast path folds its BatchNorm like InceptionV3's, and stage one, heads, fine-tuning and
    exports of a whole backbone take seconds instead of minutes."""
    import keras
    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 3), name="pixels_0_255")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="tiny_preprocess")(inputs)
    for i, (filters, stride) in enumerate(((8, 2), (16, 2), (32, 1))):
        x = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"block{i}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"block{i}_bn")(x)
        x = keras.layers.ReLU(name=f"block{i}_relu")(x)
    outputs = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    keras.Model(inputs, outputs, name="tiny_backbone").save(path)
    return path


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> Path:
    return save_tiny_backbone(tmp_path_factory.mktemp("tiny-backbone") / "tiny.keras")


def tiny_features(data: Path, backbone: Path, cache_dir: Path) -> Path:
    """Stage one through the tiny backbone file with no flag but --data and --backbone."""
    from pipeline.extract.features import FeatureSettings, run_features
    return run_features(FeatureSettings(data=str(data), backbone=str(backbone), cache_dir=str(cache_dir)),
                        log=lambda *a: None)


@pytest.fixture(scope="session")
def tiny_backbone_features(tiny_backbone, small_cifar, tmp_path_factory) -> Path:
    """Stage one with the tiny backbone file on small_cifar's 80 real images (train 30, val 10, test 40)."""
    return tiny_features(small_cifar, tiny_backbone, tmp_path_factory.mktemp("tiny-backbone-cache"))


# ---------------------------------------------------------------- a tree of mixed image sizes

MIXED_CLASSES = ("cat", "dog")
MIXED_SIZES = ((32, 32), (40, 48))         # (height, width): 32x32 and 48x40 images, alternating


def write_mixed_tree(root: Path, train_per_class=4, test_per_class=2) -> Path:
    """train/<class>/NNNN.png and test/<class>/NNNN.png of two sizes, each image a distinct smooth
    colour pattern (random noise would embed almost alike), plus test/cat/zz-copy.png: a byte copy
    of the 48x40 train/cat/0001.png (an exact duplicate across splits)."""
    import shutil
    from PIL import Image
    rng = np.random.default_rng(0)
    for part, n in (("train", train_per_class), ("test", test_per_class)):
        for c in MIXED_CLASSES:
            (root / part / c).mkdir(parents=True)
            for i in range(n):
                h, w = MIXED_SIZES[i % 2]
                coarse = Image.fromarray(rng.integers(0, 256, (3, 3, 3), dtype=np.uint8))
                coarse.resize((w, h), Image.Resampling.BILINEAR).save(root / part / c / f"{i:04d}.png")
    shutil.copy(root / "train" / "cat" / "0001.png", root / "test" / "cat" / "zz-copy.png")
    return root


@pytest.fixture(scope="session")
def mixed_features(tiny_backbone, tmp_path_factory) -> tuple[Path, Path]:
    """(features file, data root): stage one with the tiny backbone, float32, on write_mixed_tree."""
    from pipeline.extract.features import FeatureSettings, run_features
    tmp = tmp_path_factory.mktemp("mixed")
    root = write_mixed_tree(tmp / "mixed")
    path = run_features(FeatureSettings(data=str(root), backbone=str(tiny_backbone), precision="float32",
                                        cache_dir=str(tmp / "cache")), log=lambda *a: None)
    return path, root


# ---------------------------------------------------------------- a tree of random image sizes

def random_size_tree(root: Path, n_per_class: int = 70, seed: int = 0) -> Path:
    """train/ and test/ folders (classes ant, bee) of random RGB PNGs between 20 and 60 pixels on a side."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for c in ("ant", "bee"):
            (root / split / c).mkdir(parents=True)
            for i in range(n_per_class):
                h, w = rng.integers(20, 61, 2)
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / split / c / f"{i:03d}.png")
    return root


def read_features_file(path):
    """({split: {features, labels, index}}, attributes) of a features file, read with h5py alone."""
    import h5py
    from pipeline import store
    with h5py.File(path) as f:
        return {s: {k: f[s][k][...] for k in ("features", "labels", "index")} for s in store.SPLITS}, dict(f.attrs)


def done_rows(partial: Path) -> int:
    """Rows a (possibly still running) stage one has recorded as written in its .partial file."""
    import h5py
    from pipeline import store
    try:
        with h5py.File(partial, "r", locking=False) as f:
            return sum(int(f["progress"][s]["done"][...].sum()) for s in store.SPLITS)
    except (OSError, KeyError):
        return 0


# ---------------------------------------------------------------- synthetic features files

CLASSES = [f"class{i}" for i in range(10)]


def synthetic_features(cache: Path, width=16, per_class=(40, 20, 20), shuffle=False, seed=0,
                       finish=True, settings=None, row_shape=None, **attrs) -> Path:
    """A stage-one file with the store's schema: 10 Gaussian classes, far apart (separable), or
    the same points with their labels shuffled. `attrs` override the file's attributes."""
    from pipeline import store
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 3, (len(CLASSES), width))
    settings = settings or {"dataset": "synthetic", "width": width, "seed": seed, "shuffle": shuffle}
    base = {"schema_version": store.SCHEMA_VERSION, "settings_hash": identity.digest(settings),
            "settings": settings, "feature_width": width, "class_names": CLASSES, "data_fingerprint": "synthetic",
            "backbone": "synthetic", "weights": "none", "input_size": 32}
    base.update(attrs)
    row_shape = row_shape or (width,)
    labels, index, rows = {}, {}, {}
    for split, n in zip(store.SPLITS, per_class):
        y = np.repeat(np.arange(len(CLASSES)), n)
        x = (means[y] + rng.normal(0, 1, (len(y), width))).astype(np.float32)
        labels[split], index[split] = (rng.permutation(y) if shuffle else y), np.arange(len(y))
        rows[split] = x.reshape(len(y), *row_shape)
    final = cache / "features" / f"synthetic-{base['settings_hash']}.h5"
    writer = store.RowWriter(final, base, labels, index, row_shape, log=lambda *a: None)
    for split in store.SPLITS:
        writer.write(split, 0, rows[split])
    if not finish:
        writer.close()
        return store.partial_path(final)
    return writer.finish({})



# ---------------------------------------------------------------- the command line

def run_cli(capsys, *argv):
    """`python -m pipeline ARGV` in-process: (exit code, stdout lines, stderr lines)."""
    from pipeline.cli import main
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out.strip().splitlines(), err.strip().splitlines()


def assert_one_error(code, err, expect: str = ""):
    """The user-error contract: exit code 2 and exactly one `error: ...` line, no traceback."""
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (code, err)
    assert expect in err[0], err[0]


def spawn_cli(*argv, cwd=ROOT, **kwargs) -> subprocess.Popen:
    """`python -m pipeline ARGV` in its own process (for kills and concurrent runs)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "-1"}
    return subprocess.Popen([sys.executable, "-m", "pipeline", *map(str, argv)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (read from /proc)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@contextlib.contextmanager
def small_disk(megabytes: float):
    """A tmpfs of the given size (a full disk on demand); skips unless the tests run as root."""
    if os.geteuid() != 0:
        pytest.skip("a full disk is simulated with a tmpfs mount, which needs root")
    where = Path(tempfile.mkdtemp(prefix="small-disk-"))
    size = max(1, int(megabytes * 1024))
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}k", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        where.rmdir()


def fill_disk(where: Path, leave_kb: int = 0) -> Path:
    """Fill a small disk up to `leave_kb` free kilobytes; returns the filler file (delete it to free)."""
    st = os.statvfs(where)
    free = st.f_bavail * st.f_frsize - leave_kb * 1024
    filler = where / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free))
    return filler


# ---------------------------------------------------------------- the `slow` marker's rule, applied
# The rule is written with the marker in pyproject.toml. It is checked here in CPU seconds (this process
# and the subprocesses it waited for), not wall seconds, so that a busy machine does not blur it.

SLOW_SECONDS = 7       # pyproject.toml: `slow` marks tests over ~7 s of CPU
# Importing TensorFlow and Keras once per process: not the test's own cost, so not counted against the
# first test that happens to do it (measured: 6.0 s of CPU, 2-core Xeon with AMX, 2026-11-30).
TF_IMPORT_SECONDS = 6
_unmarked_slow = []


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _charge_cpu(item, when: str):
    """Around one phase of a test: its CPU seconds, less TensorFlow's import if it came in this phase."""
    tf_before, start = "tensorflow" in sys.modules, _cpu_seconds()
    yield
    seconds = _cpu_seconds() - start
    if not tf_before and "tensorflow" in sys.modules:
        seconds = max(0.0, seconds - TF_IMPORT_SECONDS)
    item.user_properties.append((f"{when}_cpu_seconds", seconds))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    yield from _charge_cpu(item, "setup")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    yield from _charge_cpu(item, "call")


def pytest_runtest_logreport(report):
    """Note unmarked tests whose call, or whose setup (the fixtures built for it, charged to the
    first test that needs them), took over SLOW_SECONDS of CPU. Runs where the reports arrive (the
    controller under pytest-xdist); the CPU seconds travel in the report's user_properties."""
    seconds = dict(report.user_properties).get(f"{report.when}_cpu_seconds", 0)
    if seconds > SLOW_SECONDS and "slow" not in report.keywords:
        _unmarked_slow.append((report.nodeid, report.when, seconds))


def pytest_terminal_summary(terminalreporter):
    """Name them, so the rule stays applied as written; a note, not a failure: the fix is the
    marker, a cheaper or shared fixture, or less data, which only a person can choose."""
    if _unmarked_slow:
        terminalreporter.section(f"over {SLOW_SECONDS} s of CPU without @pytest.mark.slow (pyproject.toml's rule)")
        for nodeid, when, seconds in sorted(_unmarked_slow, key=lambda item: -item[2]):
            terminalreporter.write_line(f"{seconds:6.1f} s  {when:5s}  {nodeid}")


# ---------------------------------------------------------------- the looking-at-results data set
# Real CIFAR-10 JPEGs in an image-folder tree, with exact copies of some train images planted in
# test, embedded by the pretrained EfficientNet-Lite0.

PLANTED_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PLANTED_TRAIN, PLANTED_TEST = 8, 4          # images per class
PLANTED = {c: "0001.jpg" for c in PLANTED_CLASSES[:5]}     # train/<c>/0001.jpg copied into test/<c>/


def make_planted_tree(root: Path) -> Path:
    """train: 8 per class, test: 4 per class plus a byte copy of train/<c>/0001.jpg for five classes
    (named zz-copy.jpg so it sorts last in its class folder)."""
    copy_cifar(root, PLANTED_TRAIN, PLANTED_TEST, PLANTED_CLASSES)
    for c, name in PLANTED.items():
        shutil.copy(root / "train" / c / name, root / "test" / c / "zz-copy.jpg")
    return root


def planted_pairs(fs):
    """{(test source index, train-set source index)} of the planted copies, from the folder order
    (class by class, sorted names), independent of the code under test."""
    test_start, train_start, pairs = 0, 0, set()
    for c in PLANTED_CLASSES:
        n_test = PLANTED_TEST + (c in PLANTED)
        if c in PLANTED:
            pairs.add((test_start + n_test - 1, train_start + int(PLANTED[c][:4])))
        test_start += n_test
        train_start += PLANTED_TRAIN
    return pairs


def build_planted(tmp: Path):
    """(features file path, data root). Stage one at the backbone's own 224 px, float32."""
    require_pretrained()
    from pipeline.extract.features import FeatureSettings, run_features
    root = make_planted_tree(tmp / "planted")
    path = run_features(FeatureSettings(data=str(root), backbone=str(PRETRAINED), precision="float32",
                                        cache_dir=str(tmp / "cache")), log=lambda *a: None)
    return path, root


# ---------------------------------------------------------------- a stage-two head for stage three
# Made to the stage-two contract (<cache>/heads/<run>/model.keras + run.json), so the stage-three
# tests do not depend on how stage two trains one.

def make_head(features: Path, run_dir: Path, hidden: int = 64, epochs: int = 30, seed: int = 0,
              dropout: float = 0.5) -> Path:
    import keras
    from pipeline.store import read_rows
    fs = read_rows(features)
    train, val, test = (fs.splits[k] for k in ("train", "val", "test"))
    keras.utils.set_random_seed(seed)
    norm = keras.layers.Normalization(name="standardize")
    norm.adapt(train.features)
    head = keras.Sequential([keras.Input((train.features.shape[1],)), norm,
                             keras.layers.Dense(hidden, activation="relu"), keras.layers.Dropout(dropout),
                             keras.layers.Dense(len(fs.class_names), activation="softmax")], name="dense_head")
    head.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    head.fit(train.features, train.labels, validation_data=(val.features, val.labels), epochs=epochs,
             batch_size=32, verbose=0,
             callbacks=[keras.callbacks.EarlyStopping(patience=5, restore_best_weights=True)])
    run_dir.mkdir(parents=True, exist_ok=True)
    head.save(run_dir / "model.keras")
    acc = {k: float(np.mean(head.predict(s.features, verbose=0).argmax(1) == s.labels))
           for k, s in (("val", val), ("test", test))}
    (run_dir / "run.json").write_text(json.dumps({
        "head": "dense", "settings": {"hidden": hidden, "epochs": epochs},
        "features": {"path": str(features), "settings_hash": fs.attrs["settings_hash"],
                     "feature_width": int(train.features.shape[1]), "class_names": fs.class_names},
        "metrics": {"val_accuracy": acc["val"], "test_accuracy": acc["test"]}}))
    return run_dir / "model.keras"


# ---------------------------------------------------------------- a user's photos: class folders, no split

PHOTO_CLASSES = ("airplane", "cat", "ship")
# (height, width) as shown, cycling: CIFAR's own 32x32, small and large upscales, portrait and landscape
PHOTO_SIZES = ((32, 32), (96, 128), (1100, 1500), (160, 90), (64, 64))
# EXIF orientation -> the PIL transpose that stores an upright image so that the tag turns it back
STORED_AS = {1: None, 2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE",
             6: "ROTATE_90", 7: "TRANSVERSE", 8: "ROTATE_270"}


def save_oriented(upright, path: Path, orientation: int, **save_kwargs):
    """Save a PIL image so that it shows as `upright` once its EXIF orientation tag is applied: the
    stored pixels turned the other way, as a phone stores a photo taken sideways."""
    from PIL import Image
    stored = upright if STORED_AS[orientation] is None else \
        upright.transpose(getattr(Image.Transpose, STORED_AS[orientation]))
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, exif=exif, **save_kwargs)
    return path


def write_photo_folder(root: Path, per_class: int = 10) -> Path:
    """<class>/NNNN.jpg with no split, as a user's photos come: real CIFAR-10 images upscaled to
    mixed sizes (one 1500x1100 per class every 5 images) and every third one stored sideways with
    an EXIF orientation tag (6 or 8, as phones write); plus a notes.txt the tool does not use."""
    require_real_images()
    from PIL import Image
    for c in PHOTO_CLASSES:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            h, w = PHOTO_SIZES[i % len(PHOTO_SIZES)]
            with Image.open(CIFAR_JPG / "train" / c / f"{i:04d}.jpg") as img:
                upright = img.convert("RGB").resize((w, h), Image.Resampling.BILINEAR)
            save_oriented(upright, root / c / f"{i:04d}.jpg", (6, 8)[i % 2] if i % 3 == 2 else 1, quality=90)
    (root / "notes.txt").write_text("where these photos came from\n")
    return root


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory) -> Path:
    return write_photo_folder(tmp_path_factory.mktemp("photos") / "photos")


@pytest.fixture(scope="session")
def photo_features(photo_folder, tiny_backbone, tmp_path_factory) -> Path:
    """Stage one with the tiny backbone on photo_folder, with no flag but --data and --backbone."""
    return tiny_features(photo_folder, tiny_backbone, tmp_path_factory.mktemp("photo-cache"))
