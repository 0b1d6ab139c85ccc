"""A backbone file's default cut: the deepest block from which on the layers hold at least 85% of the
network's weights."""
from __future__ import annotations

import pytest

from pipeline.backbones.table import WEIGHT_SHARE, default_unfreeze


def _blocks(filters):
    """block0..blockN, each one Conv2D (3x3, no bias) of the given width: weights 9 * in * out."""
    import keras
    x = inputs = keras.Input((8, 8, 1))
    for i, f in enumerate(filters):
        x = keras.layers.Conv2D(f, 3, padding="same", use_bias=False, name=f"block{i}_conv")(x)
        x = keras.layers.ReLU(name=f"block{i}_relu")(x)
    return keras.Model(inputs, x)


def test_the_cut_trains_the_fewest_top_blocks_holding_the_share():
    # weights per block: 9*1*4=36, 9*4*4=144, 9*4*8=288, 9*8*8=576, 9*8*16=1152; total 2196
    model = _blocks([4, 4, 8, 8, 16])
    # from block2 on: 2016/2196 = 0.918 >= 0.85; from block3 on: 1728/2196 = 0.787 < 0.85
    assert WEIGHT_SHARE == 0.85 and default_unfreeze(model) == "block2_conv"
    # one wide last block holding nearly everything: train it alone
    assert default_unfreeze(_blocks([2, 2, 2, 64])) == "block3_conv"


@pytest.mark.slow
def test_efficientnet_lite0_trains_from_block09():
    import keras
    from conftest import PRETRAINED
    base = keras.saving.load_model(PRETRAINED, compile=False)
    assert default_unfreeze(base) == "block09_expand_conv"
