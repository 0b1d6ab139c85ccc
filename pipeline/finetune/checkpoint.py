"""Resumable training: one checkpoint file per run, replaced atomically after every epoch.

It holds what an interrupted `fit` needs to continue as if never stopped: the model's weights,
the optimizer's variables (iteration count, momentum), the early-stopping state (best validation
loss, epochs waited, best weights) and the history so far. keras.callbacks.ModelCheckpoint writes
in place and does not keep early-stopping state, hence this small replacement.
Imported lazily by pipeline.finetune (it loads Keras).
"""
from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np

from pipeline.foundation.errors import UserError, first_line
from pipeline.foundation.outputs import atomic_file


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping whose best-so-far survives a restart (Keras resets it on train begin)."""
    carried = None   # (best, wait, best_epoch, best_weights) from a checkpoint

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.carried:
            self.best, self.wait, self.best_epoch, self.best_weights = self.carried


class Checkpoint(keras.callbacks.Callback):
    """After every epoch (and after early stopping has judged it), save everything to `path`."""

    def __init__(self, path: Path, stopper: ResumableEarlyStopping, state: dict):
        super().__init__()
        self.path, self.stopper, self.state = path, stopper, state

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.state["history"].setdefault(key, []).append(float(value))
        self.state.update(epochs_done=epoch + 1, stopped=bool(self.model.stop_training),
                          best=None if self.stopper.best is None else float(self.stopper.best),
                          wait=self.stopper.wait, best_epoch=self.stopper.best_epoch)
        save(self.path, self.model, self.stopper.best_weights, self.state)


def save(path: Path, model, best_weights, state: dict):
    arrays = {f"w{i}": w for i, w in enumerate(model.get_weights())}
    arrays.update({f"o{i}": np.asarray(v) for i, v in enumerate(model.optimizer.variables)})
    arrays.update({f"b{i}": w for i, w in enumerate(best_weights or [])})
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, state=np.array(json.dumps(state)), **arrays)


def restore(path: Path, model, stopper, run: str) -> dict:
    """Load weights and optimizer state into a compiled `model`; arm `stopper`; return the state.
    A checkpoint that cannot be read, was written by another run than `run` (or before checkpoints
    named their run), or was made for another model, is a UserError."""
    fix = "delete it to start over, or run without --resume"
    try:
        written_by = _state(path).get("run")
    except Exception as exc:      # not kept in a local: a frame holding its own exception keeps the data open
        raise UserError(f"checkpoint {path} cannot be used ({first_line(exc)}); {fix}") from None
    if written_by != run:
        why = f"it was written by run {written_by}, not this run {run}" if written_by else \
            "it names no run, so it may be another run's"
        raise UserError(f"checkpoint {path} cannot be used ({why}); {fix}")
    try:
        return _restore(path, model, stopper)
    except Exception as exc:
        raise UserError(f"checkpoint {path} cannot be used ({first_line(exc)}); {fix}") from None


def _state(path: Path) -> dict:
    with np.load(path) as z:
        state = json.loads(str(z["state"]))
    if not isinstance(state, dict):
        raise ValueError("its state is not a JSON object")
    return state


def _restore(path: Path, model, stopper) -> dict:
    with np.load(path) as z:
        state = json.loads(str(z["state"]))
        count = lambda prefix: sum(1 for k in z.files if k.startswith(prefix) and k[1:].isdigit())
        model.set_weights([z[f"w{i}"] for i in range(count("w"))])
        model.optimizer.build(model.trainable_variables)
        variables = model.optimizer.variables
        if len(variables) != count("o"):
            raise RuntimeError(f"checkpoint {path} holds {count('o')} optimizer variables, the model {len(variables)}")
        for i, v in enumerate(variables):
            v.assign(z[f"o{i}"])
        best_weights = [z[f"b{i}"] for i in range(count("b"))] or None
    stopper.carried = (state.get("best"), state.get("wait", 0), state.get("best_epoch", 0), best_weights)
    if state["stopped"]:
        stopper.best_weights = best_weights
    return state
