"""The foundation under every command: settings declared once (flags, checks, record), the one
up-to-date rule, and a run as an object with a kind."""
from __future__ import annotations

import argparse
import json
import threading
from dataclasses import dataclass

import pytest

from pipeline.foundation import layout, outputs, runs, settings
from pipeline.foundation.errors import UserError
from pipeline.foundation.settings import Checked, Choice, Interval, OnlyWith, setting


def _folder(text):
    if text.endswith(".txt"):
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    return text


@dataclass
class Example:
    rate: float = setting(0.5, Interval(float, 0, 1, closed="neither"), "a rate")
    count: int | None = setting(None, Interval(int, 1), "how many", auto="as many as fit")
    kind: str = setting("a", Choice(("a", "b")), "which")
    where: str = setting("out", Checked(_folder, "a folder", "DIR"), "where it goes", record=False)
    quick: bool = setting(False, None, "a switch")
    note: str | None = setting(None, None, "any text", record=False)


def parse(*argv):
    p = argparse.ArgumentParser()
    settings.add_flags(p, Example)
    return settings.from_args(Example, p.parse_args(list(argv)))


def test_flags_come_from_the_declaration_with_their_defaults_in_the_help():
    p = argparse.ArgumentParser()
    settings.add_flags(p, Example)
    text = p.format_help()
    for flag, shown in [("--rate", "(default: 0.5)"), ("--count", "(default: auto, as many as fit)"),
                        ("--kind", "(default: a)"), ("--where DIR", "(default: out)"), ("--quick", "a switch")]:
        assert flag in text and shown in " ".join(text.split()), (flag, text)
    assert parse() == Example()
    assert parse("--rate", "0.25", "--count", "3", "--kind", "b", "--quick") == Example(0.25, 3, "b", quick=True)
    assert parse("--count", "auto").count is None


@pytest.mark.parametrize("argv, message", [
    (["--rate", "1"], "--rate must be in (0, 1), got '1'"),
    (["--rate", "nan"], "--rate must be in (0, 1), got 'nan'"),
    (["--count", "0"], "--count must be a whole number >= 1, got '0'"),
    (["--count", "2.5"], "--count must be a whole number >= 1, got '2.5'"),
    (["--where", "x.txt"], "--where: x.txt is a file, not a folder"),
])
def test_a_bad_flag_is_one_message_from_one_template(argv, message):
    with pytest.raises(UserError) as err:
        parse(*argv)
    assert str(err.value) == message


def test_a_library_caller_is_checked_the_same_way_as_a_flag():
    with pytest.raises(UserError, match=r"^--kind must be one of a, b, got 'c'$"):
        settings.check(Example(kind="c"))
    with pytest.raises(UserError, match=r"^--count must be a whole number >= 1, got -2$"):
        settings.check(Example(count=-2))
    assert settings.check(Example(rate="0.1", count="4")) == Example(0.1, 4)   # text parsed to its type


@dataclass
class Ruled:
    engine: str = setting("local", Choice(("local", "ray")), "where")
    workers: int | None = setting(None, Interval(int, 1), "actors")
    address: str | None = setting(None, None, "cluster")
    RULES = (OnlyWith(("address", "workers"), lambda s: s.engine == "ray", "--engine ray"),)


def test_a_rule_across_settings_is_declared_with_them_and_checked_with_them():
    assert settings.check(Ruled(engine="ray", workers=2, address="auto")).workers == 2
    assert settings.check(Ruled()) == Ruled()                  # the defaults are not "given"
    with pytest.raises(UserError, match=r"^--workers applies to --engine ray only$"):
        settings.check(Ruled(workers="2"))                    # checked after parsing: "2" is 2, not the default
    with pytest.raises(UserError, match=r"^--address and --workers apply to --engine ray only$"):
        settings.check(Ruled(workers=2, address="auto"))


@pytest.mark.parametrize("argv, message", [
    (["features", "--workers", "2"], "--workers applies to --engine ray only"),
    (["sweep", "--address", "auto"], "--address applies to --engine ray only"),
    (["head", "--head", "knn", "--seeds", "3"], "--seeds applies to --head dense only"),
    (["audit", "--flip", "0.1"], "--flip applies to --labels only"),
])
def test_each_commands_rule_is_one_error_line(argv, message, tmp_path, capsys):
    from pipeline.cli import main
    assert main([*argv, "--cache-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not any(tmp_path.iterdir())


def test_the_record_holds_the_recorded_settings_with_resolved_values():
    assert settings.record(Example(), count=7) == {"rate": 0.5, "count": 7, "kind": "a", "quick": False}


def test_produce_makes_once_then_is_up_to_date(tmp_path):
    final, made, lines = tmp_path / "out.json", [], []

    def make():
        made.append(1)
        outputs.write_json_atomic(final, {"ok": True})
        return "made"

    assert outputs.produce(final, final.is_file, make, lines.append) == (False, "made")
    assert outputs.produce(final, final.is_file, make, lines.append) == (True, None)
    assert made == [1] and lines == [f"up to date: {final}"]
    # `what` names an output that is not the command's own: a fine-tune's activation cache
    outputs.produce(final, final.is_file, make, lines.append, what="activation cache")
    assert lines[-1] == f"activation cache up to date: {final}"


def test_produce_checks_again_once_it_holds_the_lock(tmp_path):
    """A second writer that waited for the lock finds the first one's output, and does not make it again."""
    final, made, inside = tmp_path / "out.json", [], threading.Event()
    release = threading.Event()

    def slow_make():
        inside.set()
        release.wait(10)
        outputs.write_json_atomic(final, {})
        made.append("first")

    first = threading.Thread(target=outputs.produce, args=(final, final.is_file, slow_make, lambda _: None))
    first.start()
    inside.wait(10)
    with pytest.raises(UserError, match="another run is writing out.json"):     # refused while it writes
        outputs.produce(final, final.is_file, lambda: made.append("second"), lambda _: None)
    release.set()
    first.join(10)
    lines = []
    assert outputs.produce(final, final.is_file, lambda: made.append("third"), lines.append, wait=True) == (True, None)
    assert made == ["first"] and lines == [f"up to date: {final}"]


@pytest.mark.parametrize("record, kind, stage, report", [
    ({"head": "logreg"}, "logreg", layout.HEADS_DIR, "reports/{name}"),
    ({"stage": "finetune"}, "finetune", layout.FINETUNE_DIR, "finetune/{name}/report"),
])
def test_a_run_is_an_object_with_its_kind_and_folders(record, kind, stage, report, tmp_path):
    folder = tmp_path / "cache" / stage / "r1"
    folder.mkdir(parents=True)
    (folder / layout.RUN_JSON).write_text(json.dumps({
        **record, "settings": {}, "metrics": {"val_accuracy": 0.5},
        "features": {"path": "cache/features/f.h5", "settings_hash": "abc"}}))
    run = runs.Run.read(folder)
    assert (run.kind, run.stage, run.cache) == (kind, stage, tmp_path / "cache")
    assert run.features == tmp_path / "cache" / "features" / "f.h5"          # an old relative path, resolved
    assert run.report == tmp_path / "cache" / report.format(name="r1")
    assert runs.run_folders(tmp_path / "cache") == [folder]
