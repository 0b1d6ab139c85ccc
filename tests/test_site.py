"""cache/reports/index.html: every run in one static page, rebuilt after each run, checked as files
(every link and image exists) and in a real headless Chromium (sorting, navigation, images, console)."""
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from pipeline.cli import main

CHROMIUM = Path("/usr/bin/chromium")


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.images, self.scripts = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
        if tag == "img":
            self.images.append(a["src"])
        if tag in ("script", "link") and (a.get("src") or a.get("href", "").startswith("http")):
            self.scripts.append(a.get("src") or a["href"])


def parse(path: Path) -> Links:
    p = Links()
    p.feed(path.read_text())
    p.close()
    return p


@pytest.fixture(scope="module")
def cache(planted, tmp_path_factory):
    """Runs of every kind through the CLI, each rebuilding the page: two logistic regressions (then a
    sweep over both, which finds them done), a dense head, and a fine-tune exporting that head on the
    backbone unchanged (--epochs 0: the page, not the training, is under test)."""
    from conftest import PRETRAINED
    cache = tmp_path_factory.mktemp("site")
    path = str(planted[0])
    for extra in (["--head", "logreg", "--C", "0.01"], ["--head", "logreg", "--C", "1"],
                  ["--head", "dense", "--hidden", "16", "--epochs", "3", "--batch-size", "32"]):
        assert main(["head", "--features", path, "--cache-dir", str(cache), *extra]) == 0
    assert main(["sweep", "--features", path, "--cache-dir", str(cache), "--head", "logreg",
                 "--grid", "C=0.01,1", "--jobs", "1"]) == 0
    assert main(["finetune", "--features", path, "--cache-dir", str(cache), "--backbone", str(PRETRAINED),
                 "--epochs", "0", "--precision", "float32"]) == 0
    return cache


def all_runs(cache: Path) -> list[str]:
    return sorted(p.parent.name for p in [*cache.glob("heads/*/run.json"), *cache.glob("finetune/*/run.json")])


@pytest.mark.slow
def test_index_lists_every_run_and_every_link_exists(cache, capsys):
    index = cache / "reports" / "index.html"
    runs = all_runs(cache)
    assert len(runs) == 4
    page = parse(index)
    assert not page.scripts                                       # nothing from the internet
    run_links = [h for h in page.links if h.startswith("runs/")]
    assert sorted({Path(h).stem for h in run_links}) == runs          # the sweeps table links its best again
    for href in page.links:
        target = (index.parent / href).resolve()
        assert target.is_file(), href
        sub = parse(target)
        assert not sub.scripts
        for ref in sub.links + sub.images:
            assert (target.parent / ref).resolve().is_file(), (href, ref)
        names = {Path(i).name for i in sub.images}
        if href.startswith("runs/"):
            assert {"confusion.png", "mistakes.png"} <= names
            assert ("curves.png" in names) == href.startswith("runs/dense-")
    text = index.read_text()
    sweep = next((cache / "sweeps").glob("*.json")).stem
    assert text.count(f"<td>{sweep}</td>") == 3      # both logreg runs name their sweep, and the sweeps table
    assert "<td>finetune</td>" in text
    # `report` rebuilds it: nothing changed, so up to date; a deleted page comes back
    capsys.readouterr()
    assert main(["report", "--cache-dir", str(cache)]) == 0
    assert capsys.readouterr().out.startswith("up to date")
    (index.parent / run_links[0]).unlink()
    assert main(["report", "--cache-dir", str(cache)]) == 0
    assert (index.parent / run_links[0]).is_file()


@pytest.mark.slow
def test_removed_runs_leave_the_page(cache, tmp_path):
    copy = tmp_path / "c"
    shutil.copytree(cache, copy)
    gone = sorted((copy / "heads").iterdir())[0]
    assert (copy / "reports" / "runs" / f"{gone.name}.html").is_file()
    shutil.rmtree(gone)
    assert main(["report", "--cache-dir", str(copy)]) == 0
    assert gone.name not in (copy / "reports" / "index.html").read_text()
    assert not (copy / "reports" / "runs" / f"{gone.name}.html").exists()


def test_report_bad_input(tmp_path, capsys):
    assert main(["report", "--cache-dir", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")


def browser():
    """Playwright driving the distribution's Chromium (Playwright's own download does not work
    offline); skipped, with the reason, where either is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")
    if not CHROMIUM.is_file():
        pytest.skip(f"no browser: {CHROMIUM} is missing (apt-get install chromium)")
    return sync_playwright


@pytest.mark.slow
def test_in_a_real_browser(cache):
    sync_playwright = browser()
    index = cache / "reports" / "index.html"
    val = {p.parent.name: json.loads(p.read_text())["metrics"]["val_accuracy"]
           for p in [*cache.glob("heads/*/run.json"), *cache.glob("finetune/*/run.json")]}
    with sync_playwright() as pw:
        try:
            chrome = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        except Exception as exc:          # e.g. missing shared libraries in a bare container
            pytest.skip(f"chromium at {CHROMIUM} does not start: {str(exc).splitlines()[0]}")
        try:
            page = chrome.new_page()
            errors = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(index.as_uri())

            def column(name):
                """The column's cells as sorted: a number cell's data-v (its text adds an interval)."""
                col = page.eval_on_selector_all("#runs thead th", "hs => hs.map(h => h.textContent)").index(name)
                return page.eval_on_selector_all(f"#runs tbody tr td:nth-child({col + 1})",
                                                 "cs => cs.map(c => c.dataset.v ?? c.textContent)")
            page.click("#runs thead th:text-is('val acc')")
            shown = [float(v) for v in column("val acc")]
            assert shown == sorted(shown, reverse=True) and len(shown) == len(val)
            assert [val[r] for r in column("run")] == shown               # whole rows moved together
            page.click("#runs thead th:text-is('val acc')")
            assert [float(v) for v in column("val acc")] == sorted(shown)
            page.click("#runs thead th:text-is('run')")
            assert column("run") == sorted(val)

            first = column("run")[0]
            page.click(f"#runs a:text-is('{first}')")
            page.wait_for_load_state("load")
            assert page.url.endswith(f"/runs/{first}.html")
            images = page.eval_on_selector_all("img", "is => is.map(i => [i.getAttribute('src'), i.naturalWidth])")
            assert len(images) >= 2 and all(width > 0 for _, width in images), images
            assert errors == []
        finally:
            chrome.close()
