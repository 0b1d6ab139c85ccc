"""Looking at results: per-run predictions and mistakes, `neighbors`, `audit`, on real CIFAR-10 images
embedded by the pretrained EfficientNet-Lite0, with exact copies of train images planted in test."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import PLANTED_CLASSES, planted_pairs
from conftest import CIFAR_JPG, PRETRAINED
from pipeline.heads import kinds, training
from pipeline.heads import mistakes
from pipeline import store
from pipeline.cli import main
from pipeline.look.pair_table import read_pairs


def folder_file(root: Path, part: str, source_index: int) -> Path:
    """The file a source index names, from the folder listing alone (the test's own reading)."""
    files = [f for c in PLANTED_CLASSES for f in sorted((root / part / c).iterdir())]
    return files[source_index]


def assert_user_error(capsys, argv, message):
    """One `error:` line naming the problem, exit code 2, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err


# ---------------------------------------------------------------- audit

def audit_json(capsys, path, cache, *extra):
    assert main(["audit", "--features", str(path), "--cache-dir", str(cache), *extra]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    return {**json.loads((Path(out[-1]) / "audit.json").read_text()), "pairs": read_pairs(out[-1])}, out


def test_audit_finds_every_planted_copy_and_nothing_else(planted, tmp_path, capsys):
    path, root, fs = planted
    want = planted_pairs(fs)
    result, out = audit_json(capsys, path, tmp_path, "--threshold", "0.85")
    test_pairs = {(p["source_index"], p["other_source_index"]) for p in result["pairs"] if p["split"] == "test"}
    assert test_pairs == want                                # every copy, and no other pair >= 0.85
    assert all(p["exact"] and p["similarity"] > 0.9999 for p in result["pairs"] if p["split"] == "test")
    assert not [p for p in result["pairs"] if p["split"] == "val"]
    s = result["summary"]["test"]
    assert (s["with_duplicate"], s["exact_copies"], s["rows"]) == (5, 5, len(fs.splits["test"].labels))
    assert s["with_duplicate_at"] == {str(t): 5 for t in (0.88, 0.9, 0.92, 0.95, 0.98)}   # copies: similarity ~1
    assert "test images with a match at a stricter threshold: >= 0.88: 5," in "\n".join(out)
    assert all(Path(out[-1], name).is_file() for name in ("pairs.png", "borderline.png"))
    # the pair gallery's partners really are the planted files
    for p in result["pairs"]:
        a = folder_file(root, "test", p["source_index"])
        b = folder_file(root, "train", p["other_source_index"])
        assert a.name == "zz-copy.jpg" and a.read_bytes() == b.read_bytes()
    # the same question again is up to date
    again, out2 = audit_json(capsys, path, tmp_path, "--threshold", "0.85")
    assert again == result and any(line.startswith("up to date") for line in out2)


def test_the_pairs_are_columns_written_to_pairs_csv_not_audit_json(planted, tmp_path):
    """A file of many near-copies flags a million pairs: they are held as columns and written to
    pairs.csv a row at a time; audit.json keeps the counts and names the file."""
    from pipeline.look import audit
    from pipeline.look.pair_table import PairTable
    path, _, fs = planted
    s = audit.AuditSettings(features=str(path), threshold=0.6, no_exact=True, cache_dir=str(tmp_path))
    folder = audit.run_audit(s, log=lambda *a: None)
    answer = json.loads((folder / "audit.json").read_text())
    assert "pairs" not in answer and answer["pairs_file"] == "pairs.csv"
    pairs = read_pairs(folder)
    assert len(pairs) == answer["summary"]["test"]["pairs"] + answer["summary"]["val"]["pairs"] > 20
    # each direction most similar first, the test direction before val's
    for split in ("test", "val"):
        sims = [p["similarity"] for p in pairs if p["split"] == split]
        assert sims == sorted(sims, reverse=True)
    assert [p["split"] for p in pairs] == sorted((p["split"] for p in pairs), key=("test", "val").index)
    first = pairs[0]
    other = fs.splits[first["other_split"]]
    assert (first["other_class"], first["other_source_index"]) == \
        (fs.class_names[int(other.labels[first["other_row"]])], int(other.index[first["other_row"]]))
    table = PairTable.of_direction(fs, "val", ("train",), [3, 1, 1], [7, 9, 2], [0.95, 0.97, 0.97], [False] * 3)
    assert [(p["row"], p["other_row"]) for p in table] == [(1, 2), (1, 9), (3, 7)]     # ties by query row, then id


def test_exact_copies_are_found_whatever_the_threshold(planted, tmp_path, capsys):
    path, _, fs = planted
    result, _ = audit_json(capsys, path, tmp_path, "--threshold", "1")
    assert {(p["source_index"], p["other_source_index"]) for p in result["pairs"]} == planted_pairs(fs)


def test_audit_accuracy_with_and_without_duplicates(planted, tmp_path, capsys):
    path, _, fs = planted
    r = training.run_head(fs, "logreg", kinds.make_settings("logreg"), tmp_path)
    table = mistakes.read_predictions(Path(r["report"]) / "predictions.csv")
    dup = {a for a, _ in planted_pairs(fs)}
    test = [t for t in table if t["split"] == "test"]
    from pipeline.foundation.stats import interval_text, wilson
    right = sum(t["correct"] for t in test)
    right_clean = sum(t["correct"] for t in test if t["source_index"] not in dup)
    want_all = interval_text(right / len(test), *wilson(right, len(test)))
    want_clean = interval_text(right_clean / (len(test) - len(dup)), *wilson(right_clean, len(test) - len(dup)))
    assert main(["audit", "--features", str(path), "--cache-dir", str(tmp_path), "--run", r["run_dir"]]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("run ")][0]
    assert f"{want_all} on all {len(test)}" in line        # every accuracy with its 95% Wilson interval
    assert f"{want_clean} on the {len(test) - len(dup)} without" in line


@pytest.mark.parametrize("argv, message", [
    (["--threshold", "0"], "--threshold must be in (0, 1], or auto, got '0'"),
    (["--threshold", "nan"], "--threshold must be in (0, 1], or auto, got 'nan'"),
    (["--run", "/nonexistent/run"], "does not exist"),
])
def test_audit_bad_input(planted, tmp_path, capsys, argv, message):
    assert_user_error(capsys, ["audit", "--features", str(planted[0]), "--cache-dir", str(tmp_path), *argv], message)


# ---------------------------------------------------------------- neighbors

def test_neighbors_of_a_train_image_file_is_that_image(planted, tmp_path, capsys):
    path, root, fs = planted
    query = root / "train" / "cat" / "0005.jpg"
    assert main(["neighbors", "--features", str(path), "--backbone", str(PRETRAINED), "--search", "train,val",
                 "--k", "3", "--cache-dir", str(tmp_path), str(query)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(Path(out[-1]).with_suffix(".json").read_text())
    first = result["queries"][0]["neighbors"][0]
    assert first["similarity"] > 0.9999 and first["class"] == "cat"
    assert folder_file(root, "train", first["source_index"]) == query
    assert Path(first["path"]) == query and Path(out[-1]).suffix == ".png"


def test_neighbors_of_a_row(planted, tmp_path, capsys):
    path, root, fs = planted
    argv = ["neighbors", "--features", str(path), "--split", "test", "--row", "3", "--k", "5",
            "--search", "train,val,test", "--cache-dir", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(Path(out[-1]).with_suffix(".json").read_text())
    found = result["queries"][0]["neighbors"]
    assert len(found) == 5 and ("test", 3) not in {(n["split"], n["row"]) for n in found}   # not itself
    # the ranking is the cosine ranking, recomputed here directly
    every = [(s, r) for s in store.SPLITS for r in range(len(fs.splits[s].labels)) if (s, r) != ("test", 3)]
    q = fs.splits["test"].features[3]
    cos = [float(fs.splits[s].features[r] @ q / np.linalg.norm(fs.splits[s].features[r]) / np.linalg.norm(q))
           for s, r in every]
    best = np.argsort(cos)[::-1][:5]
    assert [(n["split"], n["row"]) for n in found] == [every[i] for i in best]
    assert np.allclose([n["similarity"] for n in found], np.array(cos)[best], atol=1e-5)
    assert main(argv) == 0
    assert "up to date" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--split", "test", "--row", "999"], "--row must be between 0 and"),
    (["--split", "test"], "give IMAGE files, or --split and --row"),
    (["--split", "test", "--row", "1", "--k", "0"], "--k must be a whole number >= 1, got '0'"),
    (["--split", "test", "--row", "1", "--search", "tran"], "--search: expected splits from train, val, test, comma-separated, got 'tran'"),
    (["missing.jpg"], "image missing.jpg does not exist"),
])
def test_neighbors_bad_input(planted, tmp_path, capsys, argv, message):
    assert_user_error(capsys, ["neighbors", "--features", str(planted[0]), "--cache-dir", str(tmp_path), *argv],
                      message)


# ---------------------------------------------------------------- per-run views

def test_predictions_and_mistakes_are_the_rows_own_images(planted, tmp_path, monkeypatch):
    path, root, fs = planted
    drawn = {}
    real = mistakes.save_grid

    def spy(out, images, captions, **kw):
        drawn["images"], drawn["captions"] = [np.asarray(i) for i in images], captions
        return real(out, images, captions, **kw)
    monkeypatch.setattr(mistakes, "save_grid", spy)      # where the run's views look it up
    r = training.run_head(fs, "logreg", kinds.make_settings("logreg", C=0.001), tmp_path)
    report_dir = Path(r["report"])
    report = json.loads((report_dir / "report.json").read_text())
    with open(report_dir / "predictions.csv", newline="") as f:
        table = list(csv.DictReader(f))
    for split in ("val", "test"):
        mine = [t for t in table if t["split"] == split]
        assert [int(t["source_index"]) for t in mine] == fs.splits[split].index.tolist()
        assert [t["true"] for t in mine] == [fs.class_names[y] for y in fs.splits[split].labels]
        acc = np.mean([t["predicted"] == t["true"] for t in mine])
        assert acc == pytest.approx(report[f"{split}_accuracy"])
    for t in table:
        part = "test" if t["split"] == "test" else "train"
        assert Path(t["path"]) == folder_file(root, part, int(t["source_index"]))
    # the gallery: the most confident test mistakes, each cell the source image of its row
    wrong = sorted((t for t in table if t["split"] == "test" and t["correct"] == "0"),
                   key=lambda t: -float(t["probability"]))[:mistakes.MISTAKES]
    assert report["mistakes"]["source_index"] == [int(t["source_index"]) for t in wrong]
    assert len(drawn["images"]) == len(wrong) > 0 and (report_dir / "mistakes.png").is_file()
    for img, t in zip(drawn["images"], wrong):
        want = np.asarray(Image.open(folder_file(root, "test", int(t["source_index"]))).convert("RGB"))
        assert np.array_equal(img, want)
    pairs = report["most_confused"]["test"]
    cm = np.asarray(report["splits"]["test"]["confusion"])
    np.fill_diagonal(cm, 0)
    assert pairs and pairs[0]["count"] == cm.max()
    from pipeline.heads.evaluation import summary_table        # what `head` prints names them too
    assert f"{pairs[0]['true']} -> {pairs[0]['predicted']} {pairs[0]['count']}" in summary_table(report)


# ---------------------------------------------------------------- map and the Embedding Projector

def projector_message():
    """TensorBoard's ProjectorConfig message, built from its .proto definition (TensorBoard itself
    is not a dependency): text_format.Parse then checks the file as TensorBoard would read it."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    f = descriptor_pb2.FileDescriptorProto(name="projector_config_test.proto", package="tbtest", syntax="proto3")
    T = descriptor_pb2.FieldDescriptorProto
    spec = {"SpriteMetadata": [("image_path", 1, T.TYPE_STRING, 0), ("single_image_dim", 2, T.TYPE_UINT32, 1)],
            "EmbeddingInfo": [("tensor_name", 1, T.TYPE_STRING, 0), ("metadata_path", 2, T.TYPE_STRING, 0),
                              ("bookmarks_path", 3, T.TYPE_STRING, 0), ("tensor_shape", 4, T.TYPE_UINT32, 1),
                              ("sprite", 5, ".tbtest.SpriteMetadata", 0), ("tensor_path", 6, T.TYPE_STRING, 0)],
            "ProjectorConfig": [("model_checkpoint_path", 1, T.TYPE_STRING, 0),
                                ("embeddings", 2, ".tbtest.EmbeddingInfo", 1),
                                ("model_checkpoint_dir", 3, T.TYPE_STRING, 0)]}
    for name, fields in spec.items():
        m = f.message_type.add(name=name)
        for fname, number, kind, repeated in fields:
            field = m.field.add(name=fname, number=number,
                                label=T.LABEL_REPEATED if repeated else T.LABEL_OPTIONAL)
            if isinstance(kind, str):
                field.type, field.type_name = T.TYPE_MESSAGE, kind
            else:
                field.type = kind
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tbtest.ProjectorConfig"))


def test_map_and_projector_files(planted, tmp_path, capsys):
    from google.protobuf import text_format
    path, root, fs = planted
    proj = tmp_path / "projector"
    argv = ["map", "--features", str(path), "--per-class", "3", "--projector", str(proj), "--cache-dir", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    png = Path(out[0])
    assert png.suffix == ".png" and Image.open(png).size[0] > 100
    with open(png.with_suffix(".csv"), newline="") as f:
        table = list(csv.DictReader(f))
    counts = {c: sum(t["class"] == c for t in table) for c in PLANTED_CLASSES}
    assert counts == {c: 3 for c in PLANTED_CLASSES}                      # stratified: 3 of every class
    n = len(table)
    tensors = (proj / "tensors.tsv").read_text().splitlines()
    assert len(tensors) == n and all(len(line.split("\t")) == fs.attrs["feature_width"] for line in tensors)
    rows_by_index = {int(i): r for r, i in enumerate(fs.splits["test"].index)}
    first = np.array(tensors[0].split("\t"), float)
    assert np.allclose(first, fs.splits["test"].features[rows_by_index[int(table[0]["source_index"])]], rtol=1e-5)
    meta = (proj / "metadata.tsv").read_text().splitlines()
    assert len(meta) == n + 1 and meta[0].split("\t") == ["class", "split", "source_index", "path"]
    config = text_format.Parse((proj / "projector_config.pbtxt").read_text(), projector_message()())
    emb = config.embeddings[0]
    assert (emb.tensor_path, emb.metadata_path, emb.sprite.image_path) == ("tensors.tsv", "metadata.tsv", "sprite.png")
    assert list(emb.tensor_shape) == [n, fs.attrs["feature_width"]] and list(emb.sprite.single_image_dim) == [32, 32]
    side = int(np.ceil(np.sqrt(n)))
    sprite = np.asarray(Image.open(proj / "sprite.png").convert("RGB"))
    assert sprite.shape == (side * 32, side * 32, 3)
    # cell i of the sprite is the source image of metadata row i
    for i in (0, n - 1):
        r, c = divmod(i, side)
        path_i = meta[i + 1].split("\t")[3]
        want = np.asarray(Image.open(path_i).convert("RGB"))
        assert np.array_equal(sprite[r * 32:(r + 1) * 32, c * 32:(c + 1) * 32], want)
        assert Path(path_i) == folder_file(root, "test", int(meta[i + 1].split("\t")[2]))
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert again.count("up to date") == 2


@pytest.mark.parametrize("argv, message", [
    (["--per-class", "0"], "--per-class must be a whole number >= 1, got '0'"),
    (["--perplexity", "-3"], "--perplexity must be positive (a finite number > 0), got '-3'"),
    (["--projector", str(CIFAR_JPG / "train" / "cat" / "0000.jpg")], "is a file"),
])
def test_map_bad_input(planted, tmp_path, capsys, argv, message):
    assert_user_error(capsys, ["map", "--features", str(planted[0]), "--cache-dir", str(tmp_path), *argv], message)
