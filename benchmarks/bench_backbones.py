"""Stage-one speed per backbone: plain vs fast, every row of the backbone table, in one run.

plain: the backbone's Keras model (resize and preprocessing layers in front of the
       keras.applications network), float32, `model.predict` (batch 32).
fast:  `fast_extractor`: BatchNorm folded into the convolutions, precision "auto", one compiled
       graph (batch 64), as stage one runs it.
Each at its default input size on the same images, random weights (speed does not depend on their
values), after one warm-up batch each; the best of --rounds counts. Writes cache/bench/backbones.json
and prints the table.
"""
from __future__ import annotations

import argparse
import os
import sys

from bench_features import images, plain_and_fast, rate, save_result
from pipeline.foundation.machine import cpu_model  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="images per timed round (default 64)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--only", nargs="*", help="these backbones (default: the whole table)")
    args = parser.parse_args()

    from pipeline.backbones.table import BACKBONES
    from pipeline.backbones.build import build_backbone
    from pipeline.backbones.precision import resolve_precision
    from pipeline.foundation.tables import format_table
    x, source = images(args.images)
    precision, device = resolve_precision("auto")
    rows = []
    for name in args.only or BACKBONES:
        backbone = build_backbone(name, "none", seed=0)
        plain, ours = plain_and_fast(backbone, precision)
        plain(x[:32]), ours(x[:64])                       # warm-up: tracing, oneDNN kernels
        best_plain = max(rate(plain, x) for _ in range(args.rounds))
        best_fast = max(rate(ours, x) for _ in range(args.rounds))
        rows.append({"backbone": name, "size": backbone.input_size, "plain_images_per_second": round(best_plain, 1),
                     "fast_images_per_second": round(best_fast, 1), "speedup": round(best_fast / best_plain, 2)})
        print(f"{name}: plain {best_plain:.1f}, fast {best_fast:.1f} images/s", flush=True)
    result = {"machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "device": device}, "precision": precision,
              "images": len(x), "image_source": source, "rounds": args.rounds, "backbones": rows}
    print(format_table(["backbone", "size", "plain float32 images/s", f"fast {precision} images/s", "speed-up"],
                       [[r["backbone"], r["size"], r["plain_images_per_second"], r["fast_images_per_second"],
                         f"{r['speedup']:.2f}x"] for r in rows]))
    save_result("backbones", result)


if __name__ == "__main__":
    sys.exit(main())
