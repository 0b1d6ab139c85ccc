"""A stage-two dense head made to the stage-two contract, for the stage-three tests
(<cache>/heads/<run>/model.keras + run.json), so they do not depend on how stage two trains one."""
import json
from pathlib import Path

import numpy as np


def make_head(features: Path, run_dir: Path, hidden: int = 64, epochs: int = 30, seed: int = 0,
              dropout: float = 0.5) -> Path:
    import keras
    from pipeline.store import read_features
    fs = read_features(features)
    train, val, test = (fs.splits[k] for k in ("train", "val", "test"))
    keras.utils.set_random_seed(seed)
    norm = keras.layers.Normalization(name="standardize")
    norm.adapt(train.features)
    head = keras.Sequential([keras.Input((train.features.shape[1],)), norm,
                             keras.layers.Dense(hidden, activation="relu"), keras.layers.Dropout(dropout),
                             keras.layers.Dense(len(fs.class_names), activation="softmax")], name="dense_head")
    head.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    head.fit(train.features, train.labels, validation_data=(val.features, val.labels), epochs=epochs,
             batch_size=32, verbose=0,
             callbacks=[keras.callbacks.EarlyStopping(patience=5, restore_best_weights=True)])
    run_dir.mkdir(parents=True, exist_ok=True)
    head.save(run_dir / "model.keras")
    acc = {k: float(np.mean(head.predict(s.features, verbose=0).argmax(1) == s.labels))
           for k, s in (("val", val), ("test", test))}
    (run_dir / "run.json").write_text(json.dumps({
        "head": "dense", "settings": {"hidden": hidden, "epochs": epochs},
        "features": {"path": str(features), "settings_hash": fs.attrs["settings_hash"],
                     "feature_width": int(train.features.shape[1]), "class_names": fs.class_names},
        "metrics": {"val_accuracy": acc["val"], "test_accuracy": acc["test"]}}))
    return run_dir / "model.keras"
