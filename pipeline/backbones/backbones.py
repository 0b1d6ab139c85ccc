"""`python -m pipeline backbones`: the backbones --backbone can name, one row each."""
from __future__ import annotations


def add_arguments(p):
    pass


def run(args):
    from pipeline.backbones.backbone import backbone_table
    print(backbone_table())
