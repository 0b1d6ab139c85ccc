"""The logreg head on a streamed features file: the same model, fitted by the same solver. In memory
it is scikit-learn's StandardScaler + LogisticRegression(lbfgs), which needs every row at once.
Streamed, the standardized rows' objective is scikit-learn's own, written out here in numpy:

    mean over rows of the multinomial log loss  +  ||W||^2 / (2 C N)       (intercepts unpenalized)

(scikit-learn's C * sum(loss) + ||W||^2 / 2 divided by C * N; two classes are one row of W against a
zero reference logit, scikit-learn's binomial model), minimized by the same
scipy.optimize.minimize(method="L-BFGS-B") call with scikit-learn's options (maxiter = max_iter,
gtol = 1e-4, maxls 50, ftol 64 eps). Each evaluation is a pass over the file, a block of rows at a
time (float32 products, float64 sums), so memory holds a block and the coefficients, never the rows.

The solver's iterations are scikit-learn's: ~170 on all of CIFAR-10, more as the rows grow at a fixed
C (the penalty 1 / (2 C N) weakens; docs/numbers.md, "Stage two at scale"). Starting at the optimum
of a 256 MB sample held in memory was measured and dropped: 247 iterations over a 500,000-row file
from there, as many as from zero.

Adam on the softmax layer (the dense path), tried first, does not reach this optimum in a bounded
number of epochs: stopped on val loss it scored 1.9 points above lbfgs on CIFAR-10, run to its
training loss's minimum it took 99 epochs there and had no bound on a file of near-copies
(docs/numbers.md, "Stage two at scale"). SGDClassifier.partial_fit's multi-class model is
one-vs-rest, not the softmax that LogisticRegression and the shipped Dense(K, softmax) layer are.

The result is a fitted scikit-learn Pipeline (scaler statistics and coefficients), so `predict`,
`export` and affine.py treat it as any logreg run."""
from __future__ import annotations

import numpy as np

from pipeline.heads import streamed_data

TOL = 1e-4                  # LogisticRegression's default tol: lbfgs's gtol


class Objective:
    """LogisticRegression's objective and its gradient on standardized rows, over the raw float32
    rows `blocks()` yields, one pass per call, with penalty `l2` (1 / (C N), N the whole split's
    rows). Parameters are flat: W (rows, width) then the intercepts (rows);
    rows = classes, or 1 for two classes (scikit-learn's binomial model: class 1's logit against
    class 0's fixed zero). The standardization is folded into the products, never applied to the
    rows: ((x - mean) / scale) W' = x (W / scale)' - mean (W / scale)', and the gradient's
    R' (x - mean) / scale = (R' x - R' 1 mean) / scale (an elementwise pass over a block cost more
    than both products)."""

    def __init__(self, blocks, class_count: int, moments, l2: float):
        self.blocks, self.l2 = blocks, l2
        self.mean = np.asarray(moments[0], np.float64)
        self.scale = np.where(moments[1] > 0, np.sqrt(moments[1]), 1.0)      # StandardScaler's rule
        self.width, self.rows = len(self.mean), 1 if class_count == 2 else class_count
        self.passes = 0

    def start(self) -> np.ndarray:
        return np.zeros(self.rows * (self.width + 1))

    def unpack(self, params: np.ndarray):
        w = params[:self.rows * self.width].reshape(self.rows, self.width)
        return w, params[self.rows * self.width:]

    def __call__(self, params: np.ndarray):
        """(objective, gradient) at `params`: one pass over the rows."""
        w, b = self.unpack(params)
        raw_w = w / self.scale
        raw_w32, raw_b = raw_w.astype(np.float32), b - raw_w @ self.mean
        count, loss = 0, 0.0
        moment, residual_sum = np.zeros((self.width, self.rows)), np.zeros(self.rows)
        for x, y in self.blocks():
            logits = (x @ raw_w32.T).astype(np.float64) + raw_b
            if self.rows == 1:
                logits = np.hstack([np.zeros((len(x), 1)), logits])
            top = logits.max(axis=1, keepdims=True)
            exp = np.exp(logits - top)
            total = exp.sum(axis=1, keepdims=True)
            loss += float(np.sum(np.log(total[:, 0]) + top[:, 0] - logits[np.arange(len(y)), y]))
            residual = exp / total                        # softmax minus one-hot: d loss / d logits
            residual[np.arange(len(y)), y] -= 1.0
            residual = residual[:, 1:] if self.rows == 1 else residual
            moment += x.T @ residual.astype(np.float32)
            residual_sum += residual.sum(axis=0)
            count += len(y)
        self.passes += 1
        grad_w = (moment.T - residual_sum[:, None] * self.mean) / self.scale
        value = loss / count + 0.5 * self.l2 * float(np.sum(w * w))
        return value, np.concatenate([(grad_w / count + self.l2 * w).ravel(), residual_sum / count])


def minimize(objective: Objective, start: np.ndarray, max_iter: int, log=None):
    """scipy's L-BFGS-B with LogisticRegression's options, from `start`; `log(line)` after each
    iteration, if given."""
    from scipy import optimize

    def progress(intermediate_result):            # scipy passes the iterate under this name
        progress.iteration += 1
        log(f"lbfgs iteration {progress.iteration}: objective {intermediate_result.fun:.6g}, "
            f"{objective.passes} passes")
    progress.iteration = 0
    return optimize.minimize(objective, start, method="L-BFGS-B", jac=True, callback=progress if log else None,
                             options={"maxiter": max_iter, "maxls": 50, "gtol": TOL, "ftol": 64 * np.finfo(float).eps})


def as_pipeline(mean, variance, coef, intercept, s: dict, class_count: int):
    """The fitted scikit-learn Pipeline(StandardScaler, LogisticRegression) of these statistics and
    coefficients (coef: (classes, width), or (1, width) for two classes, as scikit-learn's)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    scaler = StandardScaler()
    scaler.mean_, scaler.var_ = np.asarray(mean, np.float64), np.asarray(variance, np.float64)
    scaler.scale_ = np.where(scaler.var_ > 0, np.sqrt(scaler.var_), 1.0)
    scaler.n_features_in_, scaler.n_samples_seen_ = len(scaler.mean_), 0
    logreg = LogisticRegression(C=s["C"], max_iter=s["max_iter"], solver="lbfgs")
    logreg.coef_, logreg.intercept_ = np.asarray(coef, np.float64), np.asarray(intercept, np.float64)
    logreg.classes_, logreg.n_features_in_ = np.arange(class_count), len(scaler.mean_)
    return Pipeline([("scale", scaler), ("logreg", logreg)])


def train(fs, s: dict, verbose=0):
    """(fitted Pipeline, metrics) for logreg settings `s` (C, max_iter) on the streamed file `fs`."""
    split, classes = fs.splits["train"], len(fs.class_names)
    moments = streamed_data.moments(split)
    objective = Objective(lambda: streamed_data.in_order(split), classes, moments,
                          1.0 / (s["C"] * streamed_data.n_rows(split)))
    result = minimize(objective, objective.start(), s["max_iter"],
                      log=(lambda line: print(line, flush=True)) if verbose else None)
    coef, intercept = objective.unpack(result.x)
    pipeline = as_pipeline(*moments, coef, intercept, s, classes)
    iterations = min(int(result.nit), s["max_iter"])
    pipeline[-1].n_iter_ = np.array([iterations])
    return pipeline, {"converged": result.status == 0, "iterations": iterations, "streamed": True,
                      "passes": objective.passes + 1}         # over the file: the solver's and the moments' one
