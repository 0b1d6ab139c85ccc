"""The fast extractor computes the reference function: InceptionV3 on preprocess_input(tf.image.resize(x)).

Tolerances (measured on this 2-core AMX Xeon, TF 2.21):
- float32 fast path vs reference: max abs difference ~1e-6 (BN folding reorders float32 sums);
  asserted <= 1e-4 * max|feature|.
- bfloat16 vs float32: cosine similarity per image >= 0.99999 measured at 75x75 and 299x299;
  asserted >= 0.999.
"""
import numpy as np
import pytest

from conftest import PRETRAINED, require_pretrained
from pipeline.backbones import build, folding, keras_private, table, precision as device_precision
from pipeline.backbones.weights import Weights
from pipeline.foundation.readback import sha256_file
from pipeline.foundation.errors import UserError

SIZE = 75


def _perturb_batchnorm(model, seed=0):
    """Random init leaves BN as the identity (mean 0, var 1), which would hide folding mistakes."""
    import keras
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights([rng.normal(0, 0.3, w.shape).astype("float32") if i < len(layer.weights) - 1
                               else rng.uniform(0.5, 2.0, w.shape).astype("float32")
                               for i, w in enumerate(layer.get_weights())])


@pytest.fixture(scope="module")
def inception():
    backbone = build.build_backbone("inception_v3", "none", SIZE, seed=0)
    _perturb_batchnorm(backbone.model.get_layer("inception_v3"))
    return backbone


@pytest.fixture(scope="module")
def reference(inception):
    """The plain computation the issue names, with a separately built InceptionV3 given the same
    weights (built once: an InceptionV3 costs seconds): images -> features."""
    import keras
    import tensorflow as tf
    ref = keras.applications.InceptionV3(include_top=False, weights=None, pooling="avg",
                                         input_shape=(SIZE, SIZE, 3))
    ref.set_weights(inception.model.get_layer("inception_v3").get_weights())

    def features(images):
        x = keras.applications.inception_v3.preprocess_input(tf.image.resize(tf.cast(images, tf.float32), (SIZE, SIZE)))
        return ref(x, training=False).numpy()
    return features


@pytest.fixture(scope="module")
def float32_extract(inception):
    return folding.fast_extractor(inception.model, "float32")


def _cosines(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def real_images(small_cifar):
    """16 real test images (read from small_cifar: listing the whole tree costs about a second)."""
    from pipeline.sources.dataset import load_dataset
    return load_dataset(small_cifar, limit=16).test_x


def test_float32_fast_path_matches_reference_on_random_and_real_images(reference, float32_extract, real_images):
    random_images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    for images in (random_images, real_images):
        ref, got = reference(images), float32_extract(images)
        assert got.dtype == np.float32 and got.shape == (len(images), 2048)
        assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def test_bfloat16_stays_close_to_float32(inception, float32_extract, real_images):
    images = real_images
    f32 = float32_extract(images)
    b16 = folding.fast_extractor(inception.model, "bfloat16")(images)
    assert b16.dtype == np.float32
    assert _cosines(f32, b16).min() >= 0.999
    assert not np.array_equal(f32, b16)          # it really ran in lower precision


def test_every_folded_layer_computes_in_the_chosen_precision(inception):
    """One float32 layer in a bfloat16 network casts activations up and down and halves the speed."""
    import keras
    folded = folding.fold_batchnorm(inception.model.get_layer("inception_v3"), "bfloat16")
    dtypes = {l.compute_dtype for l in folded.layers if not isinstance(l, keras.layers.InputLayer)}
    assert dtypes == {"bfloat16"}


def test_folding_handles_depthwise_convolutions_and_biases():
    import keras
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, use_bias=True)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, use_bias=False)(x)
    x = keras.layers.BatchNormalization(center=False)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, x)
    _perturb_batchnorm(model, seed=3)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D) and layer.use_bias:
            layer.bias.assign(np.linspace(-1, 1, layer.bias.shape[0]))
    folded = folding.fold_batchnorm(model)
    assert not any(isinstance(l, keras.layers.BatchNormalization) for l in folded.layers)
    x = np.random.default_rng(0).normal(size=(4, 12, 12, 3)).astype("float32")
    np.testing.assert_allclose(folded(x).numpy(), model(x, training=False).numpy(), rtol=1e-5, atol=1e-5)


def test_auto_precision_follows_the_device():
    import tensorflow as tf
    precision, device = device_precision.resolve_precision("auto")
    if tf.config.list_physical_devices("GPU"):
        assert device.startswith("GPU") and precision == "float16"
    else:
        assert device == "CPU" and precision == ("bfloat16" if device_precision.cpu_has_bf16() else "float32")
    # an unknown precision is the settings layer's to refuse, before anything resolves it
    from pipeline.extract.features import FeatureSettings
    from pipeline.foundation import settings
    with pytest.raises(UserError, match="--precision must be one of auto, float32, bfloat16, float16, got 'int8'"):
        settings.check(FeatureSettings(precision="int8"))


# /proc/cpuinfo's flags line of each kind of CPU the project supports (abridged).
CPU_FLAGS = {"avx2 only": "fpu sse4_2 avx avx2 fma",
             "avx512-bf16": "fpu sse4_2 avx avx2 fma avx512f avx512_bf16",
             "amx": "fpu sse4_2 avx avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile amx_int8"}


@pytest.mark.parametrize("cpu, gpus, expected", [("avx2 only", [], "float32"), ("avx512-bf16", [], "bfloat16"),
                                                 ("amx", [], "bfloat16"), ("avx2 only", ["gpu0"], "float16")])
def test_auto_precision_on_each_kind_of_cpu(cpu, gpus, expected, tmp_path, monkeypatch):
    import tensorflow as tf
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {CPU_FLAGS[cpu]}\n")
    monkeypatch.setattr(device_precision, "CPUINFO", cpuinfo)
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: gpus if kind == "GPU" else [])
    assert device_precision.resolve_precision("auto")[0] == expected
    assert device_precision.resolve_precision("float32")[0] == "float32"    # an explicit choice is kept on every kind
    monkeypatch.setattr(device_precision, "CPUINFO", tmp_path / "absent")       # unreadable: the safe choice
    assert device_precision.resolve_precision("auto")[0] == ("float16" if gpus else "float32")


@pytest.mark.slow
def test_weights_file_gives_the_same_network(tmp_path, inception):
    path = tmp_path / "inception.weights.h5"
    inception.model.get_layer("inception_v3").save_weights(path)
    loaded = build.build_backbone("inception_v3", str(path), SIZE, seed=123)
    assert loaded.weights == Weights("file", sha256=sha256_file(path))
    images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(loaded.model.predict(images, verbose=0), inception.model.predict(images, verbose=0))


def test_saved_backbone_file_brings_its_own_size_and_width(real_images):
    require_pretrained()
    backbone = build.build_backbone(str(PRETRAINED))
    assert (backbone.input_size, backbone.width) == (224, 1280)
    assert backbone.weights.attrs() == {"weights_source": "file", "weights_seed": -1, "weights_sha256":
                                        "cbe38d27d3d675a9b34bbfe0d790490068c14d1b4c5c8fc9e5c2996e78326728"}
    images = real_images[:4]
    ref = backbone.model.predict(images, verbose=0)
    fast = folding.fast_extractor(backbone.model, "float32")(images)
    assert np.abs(fast - ref).max() <= 1e-4 * np.abs(ref).max()


@pytest.mark.parametrize("kwargs, message", [
    (dict(backbone="inception_v3", weights="none", size=50), "at least 75"),
    (dict(backbone="no/such/model.keras"), "does not exist"),
    (dict(backbone="resnet_50"), "must be one of inception_v3, resnet50, "),
    (dict(backbone="xception", weights="none", size=64), "at least 71 for xception"),
    (dict(backbone="inception_v3", weights="no/such/file.h5"), "not a file"),
])
def test_bad_backbone_settings(kwargs, message):
    with pytest.raises(UserError, match=message):
        build.build_backbone(**kwargs)


def test_unreadable_files_are_user_errors(tmp_path):
    junk = tmp_path / "junk.weights.h5"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="cannot load inception_v3 weights"):
        build.build_backbone("inception_v3", str(junk), SIZE)
    fake_model = tmp_path / "model.keras"
    fake_model.write_bytes(b"not a zip")
    with pytest.raises(UserError, match="cannot load Keras model"):
        build.build_backbone(str(fake_model))


def test_imagenet_download_failure_is_explained(monkeypatch):

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure")
    monkeypatch.setattr("keras.src.applications.inception_v3.file_utils.get_file", offline)
    with pytest.raises(UserError, match="could not download the inception_v3 ImageNet weights.*--weights.*notop.h5"):
        build.build_backbone("inception_v3", "imagenet", SIZE)


# ---------------------------------------------------------------- every entry of the table

def _application_preprocess(entry):
    """The entry's keras.applications module's own preprocess_input (the reference)."""
    import importlib
    import keras
    constructor = getattr(keras.applications, entry.architecture.constructor)
    return importlib.import_module(constructor.__module__).preprocess_input


@pytest.mark.slow
@pytest.mark.parametrize("name", list(table.BACKBONES))
def test_every_backbone_fast_path_equals_the_keras_application(name, real_images):
    """Random weights (BatchNorm perturbed), smallest input size, random and real images: the
    folded float32 extractor equals the plain keras.applications network fed its own
    preprocess_input; bfloat16 stays within a cosine of 0.999."""
    import keras
    import tensorflow as tf
    entry = table.BACKBONES[name]
    arch, policy = entry.architecture, entry.policy
    size = max(arch.min_size, 32)
    backbone = build.build_backbone(name, "none", size, seed=0)
    assert (backbone.policy, backbone.width, backbone.input_size) == (policy, arch.width, size)
    network = backbone.model.layers[-1]
    _perturb_batchnorm(network, seed=1)
    images = np.concatenate([np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8),
                             real_images[:6]])
    pixels = tf.image.resize(tf.cast(images, tf.float32), (size, size))
    ref = network(_application_preprocess(entry)(pixels), training=False).numpy()
    f32 = folding.fast_extractor(backbone.model, "float32")(images)
    assert f32.shape == (len(images), arch.width)
    assert np.abs(f32 - ref).max() <= 1e-4 * np.abs(ref).max()
    folded = folding.fold_batchnorm(network)
    conv_fed = [l for l in network.layers if isinstance(l, keras.layers.BatchNormalization)
                and isinstance(keras_private.producer(l.input), folding._convolutions())]
    assert len(conv_fed) == len(folding._foldable_pairs(network))          # every conv->BN pair folded
    assert not any(folded.get_layer(l.name).weights for l in conv_fed)
    b16 = folding.fast_extractor(backbone.model, "bfloat16")(images)
    assert _cosines(f32, b16).min() >= 0.999
    # Fine-tuning cuts the network at its default block: the block trains, and lower then upper is the network.
    from pipeline.finetune import surgery
    head = keras.Sequential([keras.Input((arch.width,)), keras.layers.Dense(10, activation="softmax")])
    parts = surgery.split(backbone.model, head, policy.unfreeze, policy)
    assert policy.unfreeze in {l.name for l in parts.upper.layers}
    assert policy.unfreeze in table.block_names(network, policy)
    x = _application_preprocess(entry)(pixels)
    np.testing.assert_allclose(parts.upper(parts.lower(x)).numpy(), ref, rtol=0, atol=1e-5 * np.abs(ref).max())


@pytest.mark.slow
def test_weights_file_builds_what_imagenet_builds(tmp_path, monkeypatch):
    """--weights PATH gives what Keras's ImageNet build gives with the download answered by the same
    file (faked here, by patching Keras's download step): for EfficientNet that build differs from a
    random-init one (an extra input rescaling), which build.py adds without patching Keras."""
    import keras
    random_init = build.build_backbone("efficientnet_b0", "none", 32, seed=0)
    path = tmp_path / "efficientnetb0_notop.weights.h5"
    random_init.model.get_layer("efficientnet_b0").save_weights(path)
    from_file = build.build_backbone("efficientnet_b0", str(path), 32)
    monkeypatch.setattr("keras.src.applications.efficientnet.file_utils.get_file", lambda *a, **k: str(path))
    as_imagenet = build.build_backbone("efficientnet_b0", "imagenet", 32)
    assert from_file.weights == Weights("file", sha256=sha256_file(path))
    assert as_imagenet.weights == Weights("imagenet")
    images = np.random.default_rng(2).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(from_file.model.predict(images, verbose=0), as_imagenet.model.predict(images, verbose=0))
    rescalings = [sum(isinstance(l, keras.layers.Rescaling) for l in b.model.get_layer("efficientnet_b0").layers)
                  for b in (random_init, from_file)]
    assert rescalings[1] == rescalings[0] + 1


@pytest.mark.slow
def test_backbones_command_prints_the_table(capsys):
    from pipeline.cli import main
    assert main(["backbones"]) == 0
    out = capsys.readouterr().out
    for entry in table.BACKBONES.values():
        assert entry.name in out and entry.policy.unfreeze in out
    assert "inception_v3 (default)" in out
