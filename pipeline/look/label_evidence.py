"""The evidence that an image's label is wrong, from cached features alone: class probabilities that
never saw the image's own label (out-of-fold heads for train, a finished run or the fold heads for
val and test), the labels of its nearest training neighbours, and confident learning over either
or both (cleanlab: Northcutt, Jiang and Chuang, "Confident Learning", JAIR 2021; the maintained
implementation, not written again here). Every function takes the labels to check as an argument,
so planted flips (`plant_flips`) go through exactly what real labels go through."""
from __future__ import annotations

import tempfile
from pathlib import Path
import warnings

import numpy as np

from pipeline import search, store
from pipeline.extract import views
from pipeline.foundation.errors import UserError
from pipeline.heads.kinds import HEADS, make_settings, predict_proba, resolve
from pipeline.heads.mistakes import read_predictions

# The ways to score a label: confident learning on the classifier's probabilities, on the
# neighbours' votes, or on their mean ("combined"); each flags and ranks through cleanlab.
SCORES = ("combined", "confident", "neighbors")


def default_folds(labels: np.ndarray) -> int:
    """K for the out-of-fold heads: 5 from 10,000 training rows on (cleanlab's usual K; each fit is
    the costly part), 10 below (fits are cheap and each head then sees 90% of scarce data); never
    more than the smallest class has rows, so each fold holds every class."""
    return max(2, min(5 if len(labels) >= 10_000 else 10, int(np.bincount(labels).min())))


def check_folds(folds: int, labels: np.ndarray, class_names) -> None:
    counts = np.bincount(labels, minlength=len(class_names))
    small = int(np.argmin(counts))
    if folds > counts[small]:
        raise UserError(f"--folds must be at most {counts[small]} here: the smallest class ({class_names[small]}) "
                        f"has {counts[small]} training rows, got {folds}")


def plant_flips(labels: np.ndarray, share: float, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels with round(share * n) of them moved to another class, uniformly at random; the
    flipped rows), seeded."""
    rng = np.random.default_rng([seed, 1])
    rows = np.sort(rng.choice(len(labels), size=round(share * len(labels)), replace=False))
    flipped = labels.copy()
    flipped[rows] = (labels[rows] + rng.integers(1, n_classes, size=len(rows))) % n_classes
    return flipped, rows


def out_of_fold(fs: store.RowSet, labels: np.ndarray, folds: int, head: str, seed: int, log=print):
    """(train probabilities, each row's from the head fit on the other folds; the mean of the K
    heads' probabilities on val and test, images none of them saw). Stratified folds, seeded;
    every stored view of an image stays in its fold, and its probability is the views' mean."""
    from sklearn.model_selection import StratifiedKFold
    train = fs.splits["train"]
    n_classes = len(fs.class_names)
    settings = make_settings(head)
    oof = np.zeros((len(labels), n_classes))
    held = {s: np.zeros((len(fs.splits[s].labels), n_classes)) for s in ("val", "test")}
    split = StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels)
    for i, (fit_rows, score_rows) in enumerate(split, 1):
        part = store.RowSplit(train.features[fit_rows], labels[fit_rows], train.index[fit_rows],
                              None if train.mirrored is None else train.mirrored[fit_rows])
        sub = store.RowSet(fs.path, fs.attrs, {**fs.splits, "train": part})
        with tempfile.TemporaryDirectory() as tmp:      # the head's own files: not kept
            # auto settings (a dense head's batch, patience) sized from the fold, as `head` sizes them
            model = HEADS[head].train(sub, resolve(head, settings, sub), Path(tmp), 0, None)[0]
        probs = views.per_view(lambda x: predict_proba(model, x), [v[score_rows] for v in train.views])
        oof[score_rows] = probs.mean(axis=0)
        for s in held:
            held[s] += views.per_view(lambda x: predict_proba(model, x), fs.splits[s].views).mean(axis=0) / folds
        log(f"out-of-fold {head} head {i}/{folds}: fit on {len(fit_rows):,} rows, scored {len(score_rows):,}")
    return oof, held


def run_probabilities(csv_path, fs: store.RowSet, split: str) -> np.ndarray:
    """(N, K) probabilities of a finished run's `split` rows from its predictions.csv, which keeps
    the top 3 classes and the given label's probability of each row: the mass left over (what the
    other classes share, small beside the top 3) is spread evenly over them. Checked to be this
    file's rows (row numbers and source indices)."""
    names = fs.class_names
    col = {c: i for i, c in enumerate(names)}
    ours = fs.splits[split].index
    table = sorted((r for r in read_predictions(csv_path) if r["split"] == split), key=lambda r: r["row"])
    if [r["source_index"] for r in table] != ours.tolist():
        raise UserError(f"{csv_path} covers other {split} images than this features file; audit the features "
                        "file that run used")
    probs = np.zeros((len(table), len(names)))
    try:
        for i, r in enumerate(table):
            known = {r["predicted"]: r["probability"], r["true"]: float(r["true_probability"])}
            known.update({r[f"top{k}"]: float(r[f"top{k}_probability"]) for k in (2, 3) if r.get(f"top{k}")})
            for c, p in known.items():
                probs[i, col[c]] = p
            rest = [j for j in range(len(names)) if names[j] not in known]
            if rest:
                probs[i, rest] = max(0.0, 1.0 - sum(known.values())) / len(rest)
    except (KeyError, ValueError):
        raise UserError(f"{csv_path} is damaged (row {i} names a class or probability this file does not have); "
                        "delete its run folder and rerun it") from None
    return probs


def neighbour_votes(fs: store.RowSet, labels: np.ndarray, split: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """((N, K) share of each row's k nearest training images (cosine, itself left out) per class,
    their train rows (N, k)). `labels`: the train split's labels to count (planted flips included)."""
    queries = fs.splits[split].features
    exclude = np.arange(len(queries)) if split == "train" else None
    # in memory like the rest of the label audit (its out-of-fold heads hold the rows anyway): not cached
    index = search.build(search.ArrayRows(fs.splits["train"].features), search.Transform(), log=lambda *_: None)
    found, _ = search.top_k(index, queries, k, exclude)
    votes = np.zeros((len(queries), len(fs.class_names)))
    np.add.at(votes, (np.repeat(np.arange(len(queries)), found.shape[1]), labels[found].reshape(-1)), 1.0)
    return votes / found.shape[1], found


def confident_learning(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flagged mask, label quality in [0, 1] (lower: more likely wrong), suggested class) by
    cleanlab: find_label_issues (prune by noise rate) and the self-confidence quality score. The
    suggestion is the most likely class other than the given one."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    probs = np.clip(probs, 0.0, None)
    probs = probs / np.maximum(probs.sum(axis=1, keepdims=True), 1e-12)
    with warnings.catch_warnings():        # "too few examples in class c": small splits are allowed
        warnings.simplefilter("ignore")
        flagged = find_label_issues(labels, probs, n_jobs=1)
        quality = get_label_quality_scores(labels, probs, method="self_confidence")
    other = probs.copy()
    other[np.arange(len(labels)), labels] = -1.0
    return np.asarray(flagged, bool), np.asarray(quality, float), other.argmax(axis=1)


def evidence(probs: np.ndarray, votes: np.ndarray) -> dict:
    """Each score's class probabilities: the classifier's, the neighbours' votes, their mean."""
    return {"confident": probs, "neighbors": votes, "combined": (probs + votes) / 2}


def planted_scores(planted: np.ndarray, flagged: np.ndarray, quality: np.ndarray) -> dict:
    """How well one score finds the planted flips: precision and recall of the flagged rows, and
    the ROC AUC of ranking by quality (1 = every flip ranked above every clean row)."""
    from sklearn.metrics import roc_auc_score
    hit = int((planted & flagged).sum())
    return {"flagged": int(flagged.sum()), "found": hit,
            "precision": round(hit / flagged.sum(), 4) if flagged.any() else None,
            "recall": round(hit / planted.sum(), 4) if planted.any() else None,
            "auc": round(float(roc_auc_score(planted, -quality)), 4) if 0 < planted.sum() < len(planted) else None}
