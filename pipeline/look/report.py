"""The `report` command and the site's rebuild: every run collected (collect.py) and written as pages
(pages.py), under the site's lock."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.foundation import errors, layout, outputs, settings
from pipeline.foundation.errors import UserError
from pipeline.foundation.settings import setting
from pipeline.look.collect import collect_runs
from pipeline.look.pages import index_html, run_html


def _write_if_changed(path: Path, text: str) -> bool:
    if path.is_file() and path.read_bytes() == text.encode():   # bytes: a damaged page is rewritten, not a crash
        return False
    outputs.write_text_atomic(path, text)
    return True


def index_path(cache_dir) -> Path:
    return layout.folder(cache_dir, layout.REPORTS_DIR) / layout.INDEX


def rebuild(cache_dir, warn=None) -> tuple[Path, bool]:
    """Write index.html and every run's page; drop pages of runs that are gone. Returns
    (index path, whether anything changed). Runs with damaged records are left out and each is
    named once through `warn` (default: a `warning:` line on stderr). Under the site's lock, with
    waiting: two rebuilds at once (a `report` and a finishing `head`) take turns instead of one
    removing a page the other is writing."""
    index = index_path(cache_dir)
    page_dir = index.parent / layout.RUN_PAGES
    with outputs.Lock(page_dir, wait=True, also=[index]):
        page_dir.mkdir(parents=True, exist_ok=True)
        skipped = []
        runs, sweeps = collect_runs(cache_dir, skipped)
        for problem in skipped:
            (warn or errors.warn)(f"warning: left out of {index}: {problem}")
        changed = False
        for r in runs:
            changed |= _write_if_changed(page_dir / f"{r['name']}.html", run_html(r, page_dir))
        keep = {f"{r['name']}.html" for r in runs}
        for old in page_dir.glob("*.html"):
            if old.name not in keep:
                old.unlink()
                changed = True
        audits = [os.path.relpath(p, index.parent) for p in      # audit --labels' galleries
                  sorted(layout.folder(cache_dir, layout.AUDIT_DIR).glob(f"*/{layout.LABEL_GALLERY}"))]
        changed |= _write_if_changed(index, index_html(runs, sweeps, audits))
    return index, changed


# ---------------------------------------------------------------- command line

@dataclass
class ReportSettings:
    cache_dir: str = setting("cache", None, "the cache whose runs to list", metavar="DIR", record=False)


HELP = """One page for every run: cache/reports/index.html, a sortable table of all heads (any kind, sweeps
included) and fine-tunes, each linking to its own page in cache/reports/runs/ (metrics, confusion
matrices, learning curves, most-confused pairs, the mistakes gallery). Plain static files with
relative links and a few lines of inline JavaScript: they open from disk, with no server and no
internet. `head`, `sweep` and `finetune` rebuild it after every run; `python -m pipeline report`
rebuilds it on demand. A page whose content did not change is not rewritten.
"""


def add_arguments(p):
    settings.add_flags(p, ReportSettings)


def run(args):
    index, changed = run_report(settings.from_args(ReportSettings, args))
    print(index if changed else f"up to date: {index}")


def run_report(s: ReportSettings) -> tuple[Path, bool]:
    """(index.html, whether anything changed): the site of the cache `s.cache_dir`, which must exist."""
    cache = Path(settings.check(s).cache_dir)
    if not cache.is_dir():
        raise UserError(f"--cache-dir {cache} is not a folder; run `make head` first")
    return rebuild(cache)
