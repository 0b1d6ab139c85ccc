"""Print a features file's (or an activation cache's) settings, splits, shapes and completeness."""
from __future__ import annotations


def add_arguments(p):
    p.add_argument("file", metavar="FILE.h5")


def run(args):
    from pipeline.store.store import describe
    print(describe(args.file))
