"""The default dense head against the plain frozen-backbone Keras script a user would write, on the
same features file: a single Dense(n_classes) softmax on the raw features, trained 10 epochs with
Adam (Keras defaults: learning rate 1e-3, batch 32) on the train split, no validation. Both are
scored on the same test images: each accuracy with its 95% Wilson interval, and the paired
difference (default head - plain script) with its bootstrap interval and McNemar's p
(pipeline.foundation.stats). The plain script runs --seeds seeds (its accuracy is their mean; the
pair is its first seed); the default head is the command's `head` with no setting given.

    python benchmarks/bench_small_heads.py FEATURES.h5 [--cache-dir DIR] [--seeds 3] [--out result.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.foundation import stats  # noqa: E402
from pipeline.foundation.machine import cpu_model  # noqa: E402


def plain_keras_script(x_train, y_train, x_test, n_classes: int, seed: int) -> np.ndarray:
    """The 30-line script: Dense(n_classes, softmax) on the features, Adam, 10 epochs, batch 32."""
    import keras
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((x_train.shape[1],)), keras.layers.Dense(n_classes, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=10, batch_size=32, verbose=0)
    return model.predict(x_test, verbose=0).argmax(1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("features", type=Path)
    p.add_argument("--cache-dir", default="cache/bench/small-heads")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    from pipeline.heads.kinds import make_settings
    from pipeline.heads.training import run_head, predict_proba
    from pipeline.store.features import load_features
    fs = load_features(a.features)
    train, test = fs.splits["train"], fs.splits["test"]
    y_test = test.labels
    started = time.perf_counter()
    plain = [plain_keras_script(train.features, train.labels, test.features, len(fs.class_names), seed)
             for seed in range(a.seeds)]
    plain_wall = (time.perf_counter() - started) / a.seeds
    started = time.perf_counter()
    result = run_head(fs, "dense", make_settings("dense"), a.cache_dir)
    head_wall = time.perf_counter() - started
    from pipeline.heads.kinds import load_head
    head_pred = predict_proba(load_head(result["run_dir"]), test.features).argmax(1)
    plain_acc = [float(np.mean(p == y_test)) for p in plain]
    pair = stats.paired(plain[0] == y_test, head_pred == y_test)
    out = {"features": str(a.features), "train_rows": len(train.labels), "val_rows": len(fs.splits["val"].labels),
           "test_rows": len(y_test), "cpu": cpu_model(), "date": time.strftime("%Y-%m-%d"),
           "default_head": {**pair["b"], "settings": result["settings"], "epochs": result["metrics"].get("epochs"),
                            "wall_seconds": round(head_wall, 1)},
           "plain_script": {**pair["a"], "seed_accuracies": plain_acc, "mean": float(np.mean(plain_acc)),
                            "wall_seconds": round(plain_wall, 1)},
           "difference": {k: pair[k] for k in ("difference", "difference_low", "difference_high", "only_a",
                                               "only_b", "mcnemar_p")}}
    text = json.dumps(out, indent=2, default=str)
    if a.out:
        a.out.write_text(text)
    print(text)
    print(f"default head {stats.interval_text(pair['b']['accuracy'], pair['b']['low'], pair['b']['high'])}  "
          f"plain script {stats.interval_text(pair['a']['accuracy'], pair['a']['low'], pair['a']['high'])} "
          f"(seeds {', '.join(f'{v:.4f}' for v in plain_acc)})  difference "
          f"{stats.signed_text(pair['difference'], pair['difference_low'], pair['difference_high'])}, "
          f"McNemar p {pair['mcnemar_p']:.3g}")


if __name__ == "__main__":
    main()
