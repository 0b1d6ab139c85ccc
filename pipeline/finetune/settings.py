"""Stage three's settings, declared once: a leaf module the command, the recipe and the inputs all read."""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.finetune.augment import MAX_SHIFT_PX
from pipeline.foundation import flags
from pipeline.foundation.settings import POSITIVE, Choice, Interval, setting

# --epochs auto: about this many optimizer steps, within EPOCH_RANGE. Measured through EfficientNet-
# Lite0 on CIFAR-10 (cached mode, defaults, 2-core AMX Xeon): all 45,000 train images, 704 steps an
# epoch, 3 epochs -> 90.8% test (+8.9 points over the best head) in 56 min with the activation pass;
# 4,500 images (63 steps an epoch): 6 epochs 85.2%, 10 epochs 85.3%, so short sets take the top.
AUTO_STEPS = 2000
EPOCH_RANGE = (3, 10)

MODES = ("cached", "end-to-end")
OPTIMIZERS = ("adamw", "adam", "sgd")


@dataclass
class FinetuneSettings:
    features: str | None = flags.features_setting()
    # `--start-from`, not `--head`: in `head` and `sweep` --head names a head kind (finetune still takes
    # --head FILE, with a deprecation warning)
    start_from: str | None = setting(None, None, "the stage-two dense head to start from: its model.keras (default: "
                                     "the best dense head trained on the features file)", metavar="FILE",
                                     record=False)
    mode: str | None = setting(None, Choice(MODES), "default: end-to-end on a GPU, cached on a CPU")
    unfreeze_from: str | None = setting(None, None, "train this block and everything after it", metavar="NAME",
                                        auto="the top two blocks, as the backbones command lists them; for a backbone "
                                        "file, the fewest top blocks holding 85 percent of its weights, e.g. "
                                        "block09_expand_conv for EfficientNet-Lite0")
    epochs: int | None = setting(None, Interval(int, 0), "at most N epochs, the length of the cosine decay; 0 exports "
                                 "backbone + head unchanged",
                                 auto=f"the epochs nearest {AUTO_STEPS:,} optimizer steps, {EPOCH_RANGE[0]} to "
                                 f"{EPOCH_RANGE[1]}: 3 for all of CIFAR-10")
    batch_size: int = setting(64, Interval(int, 1), "training rows per step")
    lr: float = setting(1e-3, POSITIVE, "the head's peak learning rate, after warm-up; the backbone's is lr times "
                        "--backbone-lr-scale")
    backbone_lr_scale: float = setting(0.3, POSITIVE, "the backbone layers' rate: the head's times this")
    warmup_epochs: float = setting(1.0, Interval(float, 0), "linear warm-up from 0 over N epochs, but at least 300 "
                                   "steps and at most half the run (recorded in steps), then cosine decay to 0 at the "
                                   "last epoch")
    optimizer: str = setting("adamw", Choice(OPTIMIZERS), "AdamW with decoupled weight decay, Adam, or SGD with "
                             "--momentum")
    momentum: float = setting(0.9, Interval(float, 0, 1), "sgd's momentum")
    weight_decay: float = setting(0.05, Interval(float, 0, 1), "adamw's decoupled weight decay: each step shrinks "
                                  "weights by lr times this")
    label_smoothing: float = setting(0.1, Interval(float, 0, 1), "targets smoothed towards uniform by this much")
    patience: int = setting(3, Interval(int, 1), "early stopping on validation accuracy after N epochs without "
                            "improvement, the best epoch's weights restored")
    views_per_image: int = setting(2, Interval(int, 1), "cached mode: views cached per train image: as is, "
                                   f"mirrored, then random flips and translations of up to {MAX_SHIFT_PX} pixels; K "
                                   "times the activation pass",
                                   metavar="K")
    map_shift: int = setting(1, Interval(int, 0), "cached mode: move each training map by up to N cells per step")
    test_views: int = setting(2, Interval(int, 1, 2, "both"), "views averaged in the final evaluation and in the exported "
                              "model: 1 the image as is, 2 also its mirror image (each prediction costs N passes)",
                              metavar="N")
    augment: bool = setting(False, None, "end-to-end mode: on-the-fly random flips and translations (cached mode "
                            "augments through --views-per-image and --map-shift)")
    exclude: str | None = setting(None, None, "train without the training rows this CSV names (a `row` or `path` "
                                  "column, e.g. audit --labels' label_issues.csv); val and test stay whole",
                                  metavar="FILE", record=False)
    resume: bool = setting(False, None, "continue an interrupted run from its last checkpoint", record=False)
    precision: str = flags.precision_setting()
    seed: int = flags.seed_setting("seed of shuffling, augmentation, dropout")
    backbone: str | None = flags.moved_backbone_setting()
    weights: str | None = flags.moved_weights_setting()
    data: str | None = flags.moved_data_setting()
    cache_dir: str = flags.cache_dir_setting()
