"""Plain-text tables every command prints: columns padded to their widest cell, numbers right-aligned;
and the paired comparison of two runs that `compare` and a fine-tune print."""
from __future__ import annotations

from pipeline.foundation import stats


def format_table(headers, rows) -> str:
    """Plain-text table: columns padded to their widest cell, numbers right-aligned."""
    cells = [[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    numeric = [all(isinstance(row[i], (int, float)) for row in rows) for i in range(len(headers))]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()
    return "\n".join([line([str(h) for h in headers]), line(["-" * w for w in widths]), *map(line, cells)])


def paired_table(paired: dict, a: str = "A", b: str = "B") -> str:
    """What `compare` and a fine-tune print: per split, both accuracies, B - A, McNemar's p, counts."""
    table = [[split, p["a"]["n"], stats.interval_text(p["a"]["accuracy"], p["a"]["low"], p["a"]["high"]),
              stats.interval_text(p["b"]["accuracy"], p["b"]["low"], p["b"]["high"]),
              stats.signed_text(p["difference"], p["difference_low"], p["difference_high"]),
              f"{p['mcnemar_p']:.3g}", p["only_a"], p["only_b"]] for split, p in paired.items()]
    method = next(iter(paired.values()))["method"] if paired else ""
    return (format_table(["split", "images", f"{a} acc [95% CI]", f"{b} acc [95% CI]",
                          f"{b} - {a} [95% CI]", "McNemar p", f"only {a} right", f"only {b} right"], table)
            + f"\naccuracies: {stats.ACCURACY_METHOD}; {method}")
