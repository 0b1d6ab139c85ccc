"""`predict`: top-k classes of image files, folders and globs with a stage-three model, in batches, to
the screen or a CSV, with its temperature, mirror TTA, skipped unreadable files, and bad input."""
import csv
import json

import numpy as np
import pytest
from PIL import Image

from conftest import make_head
from pipeline.cli import main
from pipeline.finetune.finetune import FinetuneSettings, run_finetune

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def model(tiny_backbone_features, tiny_backbone, tmp_path_factory):
    """Backbone + head exported without training (--epochs 0): the quickest real image model; one
    test-time view, so that predict's own --tta is what averages the mirror."""
    cache = tmp_path_factory.mktemp("predict")
    head = make_head(tiny_backbone_features, cache / "heads" / "dense-1", epochs=3)
    return run_finetune(FinetuneSettings(features=str(tiny_backbone_features), start_from=str(head), epochs=0,
                                         backbone=str(tiny_backbone), mode="cached", precision="float32",
                                         test_views=1, cache_dir=str(cache)),
                        log=lambda *a: None)


def run_cli(capsys, *argv):
    code = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out.strip().splitlines(), err.strip().splitlines()


def expected_probs(model, images, tta=False):
    """The saved model's probabilities with the run's fitted temperature (and the mirror's, averaged)."""
    import keras
    from pipeline.heads.calibration import as_logits, scaled_probs
    t = json.loads((model.parent / "run.json").read_text())["calibration"]["temperature"]
    net = keras.models.load_model(model)
    views = [images, images[:, :, ::-1]] if tta else [images]
    return np.mean([scaled_probs(as_logits(net.predict(v, verbose=0)), t) for v in views], axis=0)


def save_images(folder, n, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        paths.append(folder / f"{i:02d}.png")
        Image.fromarray(img).save(paths[-1])
    return images, paths


@pytest.mark.slow
def test_prints_the_top_three_classes_of_each_image(model, tmp_path, capsys):
    (small,), (a,) = save_images(tmp_path, 1)
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (80, 60), dtype=np.uint8)).convert("L").save(
        tmp_path / "b.jpg")
    code, out, err = run_cli(capsys, "predict", "--model", model, a, tmp_path / "b.jpg")
    assert code == 0 and len(out) == 2
    probs = expected_probs(model, small[None])[0]
    expected = ", ".join(f"{CLASSES[i]} {probs[i]:.3f}" for i in np.argsort(probs)[::-1][:3])
    assert out[0] == f"{a}: {expected}"
    shown = [float(part.rsplit(" ", 1)[1]) for part in out[1].split(": ", 1)[1].split(", ")]
    assert len(shown) == 3 and shown == sorted(shown, reverse=True) and sum(shown) <= 1.001


def test_a_folder_with_a_corrupt_file_gives_a_csv_of_the_good_images_and_names_the_bad_one(model, tmp_path, capsys):
    images, paths = save_images(tmp_path / "photos" / "deeper", 5)
    bad = tmp_path / "photos" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "photos" / "notes.txt").write_text("not an image: ignored in a folder")
    out_csv = tmp_path / "out" / "predictions.csv"
    code, out, err = run_cli(capsys, "predict", "--model", model, tmp_path / "photos", "--out", out_csv,
                             "--top-k", 2, "--batch-size", 2)
    assert code == 3 and out == []
    skipped = [line for line in err if line.startswith("skipped")]
    assert len(skipped) == 1 and skipped[0].startswith(f"skipped: cannot read image {bad}: ")
    rows = list(csv.reader(out_csv.open()))
    assert rows[0] == ["path", "class_1", "prob_1", "class_2", "prob_2"]
    assert [r[0] for r in rows[1:]] == [str(p) for p in paths]
    probs = expected_probs(model, images)
    for row, p in zip(rows[1:], probs):
        best = np.argsort(p)[::-1][:2]
        assert row[1::2] == [CLASSES[i] for i in best]
        np.testing.assert_allclose([float(v) for v in row[2::2]], p[best], atol=1e-5)


def test_glob_and_tta_average_each_image_with_its_mirror(model, tmp_path, capsys):
    images, paths = save_images(tmp_path / "a" / "b", 3, seed=2)
    code, out, err = run_cli(capsys, "predict", "--model", model, str(tmp_path / "**" / "*.png"), "--tta",
                             "--top-k", 10, "--out", tmp_path / "p.csv")
    assert code == 0
    rows = list(csv.reader((tmp_path / "p.csv").open()))[1:]
    assert [r[0] for r in rows] == [str(p) for p in paths]
    probs = expected_probs(model, images, tta=True)
    plain = expected_probs(model, images)
    for row, p in zip(rows, probs):
        got = dict(zip(row[1::2], map(float, row[2::2])))
        np.testing.assert_allclose([got[c] for c in CLASSES], p, atol=1e-5)
    assert np.abs(probs - plain).max() > 1e-4      # the mirror changed something


@pytest.mark.parametrize("case, message", [
    ("missing model", "does not exist; give a run folder"),
    ("head as model", "not uint8 images"),
    ("empty folder", "matches no image files"),
    ("folder as model", "is not a model predict reads"),
])
def test_bad_input_gives_one_error_line_and_exit_2(model, tmp_path, capsys, case, message):
    image = tmp_path / "ok.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    model_arg = model
    if case == "missing model":
        model_arg = tmp_path / "none.keras"
    elif case == "head as model":      # a head's model.keras on its own, without its run.json
        model_arg = tmp_path / "head.keras"
        model_arg.write_bytes((model.parents[2] / "heads" / "dense-1" / "model.keras").read_bytes())
    elif case == "folder as model":
        model_arg = tmp_path
    elif case == "empty folder":
        image = tmp_path / "empty"
        image.mkdir()
    code, out, err = run_cli(capsys, "predict", "--model", model_arg, image)
    assert code == 2 and out == [] and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_a_missing_file_is_skipped_and_the_others_predicted(model, tmp_path, capsys):
    _, (good,) = save_images(tmp_path, 1)
    code, out, err = run_cli(capsys, "predict", "--model", model, tmp_path / "nothing.png", good)
    assert code == 3 and len(out) == 1 and out[0].startswith(f"{good}: ")
    assert err == [f"skipped: image {tmp_path / 'nothing.png'} does not exist"]


# ---------------------------------------------------------------- which files: links, loops, odd names

def test_globs_follow_no_linked_folder_and_name_each_real_file_once(tmp_path, monkeypatch):
    """Two links back to the folder (loops), a link out of it and a second name of one file: as a
    folder argument, a glob sees each real image inside the folder once, and returns at once."""
    from pipeline.sources.files import expand
    monkeypatch.chdir(tmp_path)
    _, (x,) = save_images(tmp_path / "L", 1)
    _, (y,) = save_images(tmp_path / "L" / "sub", 1, seed=1)
    save_images(tmp_path / "outside", 1, seed=2)
    for name, target in (("a", "."), ("b", "."), ("out", "../outside")):
        (tmp_path / "L" / name).symlink_to(target, target_is_directory=True)
    (tmp_path / "L" / "again.png").symlink_to(x.name)
    inside = {x.resolve(), y.resolve()}
    for args in (["L/**/*.png"], [str(tmp_path / "L" / "**" / "*.png")], ["L/*/*.png", "L/*.png"], ["L"],
                 ["L", "L/**/*.png", str(x)]):
        found = expand(args)
        assert {p.resolve() for p in found} == inside and len(found) == 2, (args, found)


def test_an_existing_name_with_glob_characters_is_a_file_not_a_pattern(tmp_path):
    from pipeline.sources.files import expand
    _, (plain,) = save_images(tmp_path, 1)
    odd = plain.rename(tmp_path / "br[1].png")
    assert expand([str(odd)]) == [odd]
    (tmp_path / "br1.png").write_bytes(odd.read_bytes())
    odd.unlink()      # now a pattern: it matches br1.png
    assert expand([str(odd)]) == [tmp_path / "br1.png"]


@pytest.mark.parametrize("case, message", [
    ("a folder", "is a folder; name a file in it"),
    ("under a file", "is a file, not a folder"),
    ("unwritable", "cannot write in"),
])
def test_out_is_checked_before_the_model_or_any_image_is_read(tmp_path, capsys, monkeypatch, case, message):
    import pipeline.foundation.flags
    _, (image,) = save_images(tmp_path, 1)
    out = {"a folder": tmp_path, "under a file": image / "predictions.csv"}.get(case, tmp_path / "new" / "p.csv")
    if case == "unwritable":      # as a read-only folder or file system answers (root may write anywhere else)
        monkeypatch.setattr(pipeline.foundation.flags.os, "access", lambda path, mode: False)
    code, stdout, err = run_cli(capsys, "predict", "--model", tmp_path / "no-such-model", image, "--out", out)
    assert code == 2 and stdout == [] and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_a_full_disk_while_writing_predictions_does_not_claim_work_is_kept(tmp_path, capsys, monkeypatch):
    import errno
    from pipeline.ship import predict

    class Fixed:         # no model needed: what is written, and how it fails, is the point
        class_names = ["a", "b"]

        def __init__(self, *args, **kwargs):
            pass

        def predict_paths(self, paths, k, batch_size):
            yield [(p, [("a", 0.75), ("b", 0.25)][:k]) for p in paths], []

    def full(path, rows, k):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(predict, "Predictor", Fixed)     # where the command looks it up
    monkeypatch.setattr(predict, "write_csv", full)
    _, (image,) = save_images(tmp_path, 1)
    code, out, err = run_cli(capsys, "predict", "--model", tmp_path, image, "--out", tmp_path / "p.csv")
    assert code == 2 and len(err) == 1 and err[0].startswith("error: disk full while writing"), err
    assert "kept" not in err[0]


def test_file_names_that_are_not_utf8_are_predicted_and_written(model, tmp_path, capsys):
    import os
    _, (image,) = save_images(tmp_path, 1)
    odd = tmp_path / os.fsdecode(b"caf\xe9-\xff.png")        # Latin-1 bytes: not valid UTF-8
    image.rename(odd)
    out_csv = tmp_path / os.fsdecode(b"pr\xe9dictions.csv")
    code, out, err = run_cli(capsys, "predict", "--model", model, odd, "--out", out_csv)
    assert code == 0, err
    rows = open(os.fsencode(out_csv), "rb").read().splitlines()
    assert len(rows) == 2 and rows[1].startswith(os.fsencode(odd) + b",")    # the name's own bytes


def test_predictions_on_a_full_disk_are_one_error_line_and_leave_nothing(model, tmp_path, capsys):
    from conftest import fill_disk, small_disk
    _, paths = save_images(tmp_path, 3)
    with small_disk(0.1) as where:
        fill_disk(where)
        code, out, err = run_cli(capsys, "predict", "--model", model, *paths, "--out", where / "p.csv")
        assert code == 2 and len(err) == 1 and err[0].startswith("error: disk full while writing"), err
        assert "kept" not in err[0] and sorted(p.name for p in where.iterdir()) == ["filler"]


def test_progress_is_plain_lines_when_stderr_is_a_log(model, tmp_path, capsys, monkeypatch):
    from pipeline.foundation.progress import INTERVAL_ENV
    monkeypatch.setenv(INTERVAL_ENV, "0")                 # a line after every batch
    _, paths = save_images(tmp_path, 3)
    code, out, err = run_cli(capsys, "predict", "--model", model, *paths, "--batch-size", 2)
    assert code == 0 and len(out) == 3
    assert [line.split(" rows")[0] for line in err] == ["predict: 2/3", "predict: 3/3", "predict: 3/3"]


def test_a_head_run_gives_a_mixed_size_source_image_its_stored_rows_answer(mixed_features, tiny_backbone, tmp_path):
    """A 48x40 image of a 32x32-first source: predict of the dense head run embeds it as stage one
    did (alone, straight to the backbone's input; it resized it to the first image's size before),
    so its probabilities are the head's on its stored row (float32 features: float32 tolerance)."""
    import keras
    from conftest import MIXED_CLASSES
    from pipeline import store
    from pipeline.heads import kinds, training
    from pipeline.heads.calibration import as_logits, scaled_probs
    from pipeline.ship.predictor import Predictor
    path, root = mixed_features
    fs = store.read_rows(path)
    run = training.run_head(fs, "dense", kinds.make_settings("dense", hidden=16, epochs=30, lr=0.05, dropout=0.0),
                            tmp_path)
    image = root / "train" / "cat" / "0001.png"            # source index 1 of train (class by class, sorted)
    assert Image.open(image).size == (48, 40)
    split = next(s for s in ("train", "val") if 1 in fs.splits[s].index)
    row = fs.splits[split].features[list(fs.splits[split].index).index(1)]
    head = keras.models.load_model(f"{run['run_dir']}/model.keras")
    expected = scaled_probs(as_logits(head.predict(row[None], verbose=0)), run["calibration"]["temperature"])[0]
    [(_, top)], _ = next(Predictor(run["run_dir"], backbone=str(tiny_backbone)).predict_paths([image], k=2))
    got = dict(top)
    np.testing.assert_allclose([got[c] for c in MIXED_CLASSES], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case, reason", [
    ("a link to itself", "is a link that loops or leads nowhere"),
    ("a pipe", "is not a regular file (a pipe, socket or device)"),
])
def test_a_looping_link_or_a_pipe_is_skipped_with_its_reason(model, tmp_path, capsys, case, reason):
    """Issue 22.5: a link to itself was a traceback (exit 1), a FIFO was called missing."""
    import os
    _, (good,) = save_images(tmp_path, 1)
    odd = tmp_path / "odd.jpg"
    if case == "a pipe":
        os.mkfifo(odd)
    else:
        odd.symlink_to(odd.name)
    code, out, err = run_cli(capsys, "predict", "--model", model, odd, good)
    assert code == 3 and len(out) == 1 and out[0].startswith(f"{good}: "), (out, err)
    assert err == [f"skipped: image {odd} {reason}"], err


def test_a_glob_ending_in_two_stars_searches_the_folders_it_matches(model, tmp_path, capsys):
    """Issue 22.5: `dir/**` matched nothing (pathlib's ** matches folders only); the help says it recurses."""
    _, paths = save_images(tmp_path / "dir" / "deeper", 2)
    code, out, err = run_cli(capsys, "predict", "--model", model, str(tmp_path / "dir" / "**"))
    assert code == 0 and sorted(line.split(": ")[0] for line in out) == sorted(map(str, paths)), (out, err)
