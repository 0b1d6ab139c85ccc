"""`predict`: top-3 classes of image files with a stage-three model, and its bad input."""
import numpy as np
import pytest
from PIL import Image

from finetune_helpers import make_head
from pipeline.cli import main
from pipeline.finetune import FinetuneSettings, run_finetune


@pytest.fixture(scope="module")
def model(tiny_inception_features, tmp_path_factory):
    """Backbone + head exported without training (--epochs 0): the quickest real image model."""
    cache = tmp_path_factory.mktemp("predict")
    head = make_head(tiny_inception_features, cache / "heads" / "dense-1", epochs=3)
    return run_finetune(FinetuneSettings(features=str(tiny_inception_features), head=str(head), epochs=0,
                                         mode="cached", precision="float32", cache_dir=str(cache)),
                        log=lambda *a: None)


def run_cli(capsys, *argv):
    code = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out.strip().splitlines(), err.strip().splitlines()


def test_prints_the_top_three_classes_of_each_image(model, tmp_path, capsys):
    import keras
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(small).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 256, (80, 60), dtype=np.uint8)).convert("L").save(tmp_path / "b.jpg")
    code, out, err = run_cli(capsys, "predict", "--model", model, tmp_path / "a.png", tmp_path / "b.jpg")
    assert code == 0 and len(out) == 2 and out[0].startswith(f"{tmp_path / 'a.png'}: ")
    probs = keras.models.load_model(model).predict(small[None], verbose=0)[0]
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    expected = ", ".join(f"{names[i]} {probs[i]:.3f}" for i in np.argsort(probs)[::-1][:3])
    assert out[0] == f"{tmp_path / 'a.png'}: {expected}"
    shown = [float(part.rsplit(" ", 1)[1]) for part in out[1].split(": ", 1)[1].split(", ")]
    assert len(shown) == 3 and shown == sorted(shown, reverse=True) and sum(shown) <= 1.001


@pytest.mark.parametrize("case, message", [
    ("corrupt", "cannot read image"),
    ("missing image", "does not exist"),
    ("missing model", "model file"),
    ("head as model", "not uint8 images"),
])
def test_bad_input_gives_one_error_line_and_exit_2(model, tiny_inception_features, tmp_path, capsys, case, message):
    image = tmp_path / "ok.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    model_arg = model
    if case == "corrupt":
        image = tmp_path / "broken.jpg"
        image.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    elif case == "missing image":
        image = tmp_path / "nothing.png"
    elif case == "missing model":
        model_arg = tmp_path / "none.keras"
    elif case == "head as model":
        model_arg = model.parents[2] / "heads" / "dense-1" / "model.keras"
    code, out, err = run_cli(capsys, "predict", "--model", model_arg, image)
    assert code == 2 and out == [] and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
