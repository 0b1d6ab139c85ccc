"""The report's HTML: the sortable index of every run and one page per run, plain static files with
inline CSS and a few lines of JavaScript, so they open from disk with no server."""
from __future__ import annotations

import html
import os
from pathlib import Path

from pipeline.foundation import layout
from pipeline.foundation.stats import interval_text
from pipeline.foundation.tables import paired_table
from pipeline.heads.kinds import TIE_RULE

STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;text-align:left}
th[data-sort]{cursor:pointer;background:#eef}th[data-sort]:hover{background:#dde}
th[data-dir=down]::after{content:" \\25BC"}th[data-dir=up]::after{content:" \\25B2"}
td.num{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%;border:1px solid #ddd}
.note{color:#666;font-size:12px}code{font-size:12px}"""
SORT_JS = """document.querySelectorAll("th[data-sort]").forEach(th => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0], col = th.cellIndex, num = th.dataset.sort === "num";
  // first click: numbers largest first, text A-Z; each further click reverses
  const down = th.dataset.dir ? th.dataset.dir === "up" : num;
  th.closest("tr").querySelectorAll("th").forEach(h => delete h.dataset.dir);
  th.dataset.dir = down ? "down" : "up";
  const value = tr => { const c = tr.cells[col], v = c.dataset.v ?? c.textContent;
                        return num ? (v === "" ? -Infinity : parseFloat(v)) : v.toLowerCase(); };
  [...body.rows].sort((a, b) => { const x = value(a), y = value(b);
                                  return (x < y ? -1 : x > y ? 1 : 0) * (down ? -1 : 1); })
               .forEach(tr => body.appendChild(tr));
}));"""
ACCURACY_NOTE = "value [95% Wilson score interval over images]"
COLUMNS = [  # (header, key, numeric)
    ("run", "name", False), ("kind", "kind", False), ("sweep", "sweep", False), ("features", "features", False),
    ("backbone", "backbone", False), ("settings", "settings", False), ("val acc", "val_accuracy", True),
    ("test acc", "test_accuracy", True), ("time s", "wall_seconds", True), ("finished (UTC)", "finished", False)]


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _page(title: str, body: str, script: str = "") -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<link rel=\"icon\" href=\"data:,\">"       # no favicon request: nothing fails to load
            f"<title>{_e(title)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n"
            + (f"<script>\n{script}\n</script>\n" if script else "") + "</body></html>\n")


def _cell(run: dict, key: str, numeric: bool) -> str:
    value = run.get(key)
    if key == "name":
        return f'<td><a href="{layout.RUN_PAGES}/{_e(run["name"])}.html">{_e(value)}</a></td>'
    if numeric:
        text = "" if value is None else (_accuracy_text(run, key) if key.endswith("accuracy") else f"{value:.1f}")
        return f'<td class="num" data-v="{"" if value is None else _e(value)}">{text}</td>'
    return f"<td>{_e(value or '')}</td>"


def _accuracy_text(run: dict, key: str) -> str:
    """"0.8123 [0.8012, 0.8230]": the accuracy with its 95% Wilson interval, when known."""
    return interval_text(run[key], *(run.get(f"{key}_interval") or (None, None)))


def index_html(runs: list[dict], sweeps: list[dict], label_audits=()) -> str:
    """`label_audits`: the label galleries of `audit --labels` (paths relative to the page)."""
    runs = sorted(runs, key=lambda r: r["finished"], reverse=True)
    head = "".join(f'<th data-sort="{"num" if num else "text"}">{_e(h)}</th>' for h, _, num in COLUMNS)
    body_rows = "\n".join("<tr>" + "".join(_cell(r, k, num) for _, k, num in COLUMNS) + "</tr>"
                          for r in runs)
    parts = [f"<h1>All runs ({len(runs)})</h1>",
             '<p class="note">Click a column header to sort (again to reverse). Models are chosen on val; '
             "test accuracy is for reading only. Accuracies: " + _e(ACCURACY_NOTE) + ".</p>",
             f'<table id="runs"><thead><tr>{head}</tr></thead><tbody>\n{body_rows}\n</tbody></table>']
    if sweeps:
        rows = "\n".join(f'<tr><td>{_e(s["name"])}</td><td class="num">{len(s["runs"])}</td>'
                         f'<td><a href="{layout.RUN_PAGES}/{_e(s["best"])}.html">{_e(s["best"])}</a></td><td>'
                         + (f'<a href="{layout.RUN_PAGES}/{_e(s["recommended"])}.html">{_e(s["recommended"])}</a>'
                            if s["recommended"] else "") + "</td></tr>" for s in sweeps)
        parts.append("<h2>Sweeps</h2><table><thead><tr><th>sweep</th><th>runs</th><th>best on val</th>"
                     f"<th>recommended</th></tr></thead><tbody>\n{rows}\n</tbody></table>"
                     f'<p class="note">Recommended: {_e(TIE_RULE)}.</p>')
    if not runs:
        parts.append('<p class="note">No runs yet: <code>make head</code> makes one.</p>')
    if label_audits:
        parts.append("<h2>Label audits</h2><ul>" + "".join(f'<li><a href="{_e(p)}">{_e(p)}</a></li>'
                                                           for p in label_audits) + "</ul>")
    return _page("All runs", "\n".join(parts), SORT_JS)


def run_html(run: dict, page_dir: Path) -> str:
    report, report_dir = run["report"], run["report_dir"]

    def rel(name):
        return _e(os.path.relpath(report_dir / name, page_dir))
    facts = [(h, _accuracy_text(run, k) if k.endswith("accuracy") and run.get(k) is not None else run.get(k))
             for h, k, _ in COLUMNS if k != "name"]
    parts = [f"<p><a href=\"../{layout.INDEX}\">all runs</a></p><h1>{_e(run['name'])}</h1>",
             "<table>" + "".join(f"<tr><th>{_e(h)}</th><td>{_e('' if v is None else v)}</td></tr>" for h, v in facts)
             + "</table>"]
    comparison = report.get("comparison") or run["info"].get("comparison")
    if comparison and comparison.get("paired"):       # pipeline.look.compare's statement of it
        parts.append(f"<h2>Fine-tuned against its starting head</h2><pre>"
                     f"{_e(paired_table(comparison['paired'], 'head', 'tuned'))}</pre>")
    elif comparison:
        parts.append("<h2>Fine-tuned against its starting head</h2><table><tr><th></th><th>val acc</th>"
                     "<th>test acc</th></tr>" + "".join(
                         f"<tr><td>{_e(k)}</td><td class=\"num\">{_e(comparison[k].get('val_accuracy'))}</td>"
                         f"<td class=\"num\">{_e(comparison[k].get('test_accuracy'))}</td></tr>"
                         for k in ("head", "finetuned", "delta") if isinstance(comparison.get(k), dict))
                     + "</table>")
    splits = report.get("splits") or {}
    if splits:
        names = report.get("class_names") or []
        head = "".join(f"<th>{_e(s)} {k}</th>" for s in splits for k in ("precision", "recall [95% CI]", "F1"))
        rows = "".join("<tr><td>" + _e(c) + "</td>" + "".join(
            f"<td class=\"num\">{_class_cell(splits[s]['per_class'][c], k)}</td>"
            for s in splits for k in ("precision", "recall", "f1")) + "</tr>" for c in names)
        parts.append(f"<h2>Per class</h2><table><tr><th>class</th>{head}</tr>{rows}</table>"
                     '<p class="note">Recall intervals: 95% Wilson score interval over the class\'s images.</p>')
    confused = report.get("most_confused") or {}
    if confused:
        items = "".join(f"<li>{_e(s)}: " + "; ".join(f"{_e(p['true'])} &rarr; {_e(p['predicted'])} "
                                                      f"({p['count']})" for p in pairs) + "</li>"
                        for s, pairs in confused.items())
        parts.append(f"<h2>Most-confused pairs (true &rarr; predicted, count)</h2><ul>{items}</ul>")
    for title, name in (("Confusion matrices", layout.CONFUSION_PNG), ("Learning curves", layout.CURVES_PNG),
                        ("Most confident mistakes", layout.MISTAKES_PNG)):
        if (report_dir / name).is_file():
            parts.append(f'<h2>{title}</h2><img src="{rel(name)}" alt="{_e(title)}">')
    note = (report.get("mistakes") or {}).get("note")
    if note:
        parts.append(f'<p class="note">{_e(note)}</p>')
    links = [f'<a href="{rel(n)}">{n}</a>' for n in (layout.PREDICTIONS, layout.REPORT_JSON)
             if (report_dir / n).is_file()]
    if links:
        parts.append("<p>" + " &middot; ".join(links) + "</p>")
    return _page(run["name"], "\n".join(parts))


def _class_cell(c: dict, key: str) -> str:
    interval = c.get("recall_interval") if key == "recall" else None
    return f"{c[key]:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")
