"""The logreg head on a streamed features file: the same model, fitted by the same solver. In memory
it is scikit-learn's StandardScaler + LogisticRegression(lbfgs), which needs every row at once.
Streamed, the standardized rows' objective is scikit-learn's own, written out here in numpy:

    mean over rows of the multinomial log loss  +  ||W||^2 / (2 C N)       (intercepts unpenalized)

(scikit-learn's C * sum(loss) + ||W||^2 / 2 divided by C * N; two classes are one row of W against a
zero reference logit, scikit-learn's binomial model), minimized from zero by the
scipy.optimize.minimize(method="L-BFGS-B") scikit-learn calls, with its options (maxiter = max_iter,
maxls 50, ftol 64 eps) and its stop (every gradient component under tol = 1e-4). Each evaluation is
a pass over the file, a block of rows at a time (float32 products, float64 sums), so memory holds a
block and the coefficients, never the rows.

A pass costs a read of the file, so the solver works in whitened coordinates: W = V P with
P = (S + RIDGE I)^(-1/2), S the standardized rows' second moment on a sample of SAMPLE_ROWS spread
over the file. A change of variables moves no optimum; it only rounds the level sets lbfgs walks
(the standardized features are correlated: S's eigenvalues span 0.04 to 48 on CIFAR-10), which
took 173 -> 60 iterations on CIFAR-10, and 273 -> 79 at the C that mimics 2,000,000 of its rows.
The stop is tested on W's gradient, as scikit-learn's, not on V's.

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

TOL = 1e-4                  # LogisticRegression's default tol: its lbfgs's gtol
SAMPLE_ROWS = 16_384        # rows for the preconditioner's S: 84 MB at width 1,280, 12.8 rows a feature
RIDGE = 0.1                 # added to S's eigenvalues (0.04 to 48 on CIFAR-10): 0.01 and 0.1 did as well there


def standard_scale(variance) -> np.ndarray:
    """StandardScaler's scale_: the standard deviation, 1 for a constant feature."""
    variance = np.asarray(variance, np.float64)
    return np.where(variance > 0, np.sqrt(variance), 1.0)


class Objective:
    """LogisticRegression's objective and its gradient on standardized rows, over the raw float32
    rows `blocks()` yields, one pass per call, with penalty `l2` (1 / (C N), N the whole split's
    rows). Parameters are flat: W (rows, width) then the intercepts (rows); rows = classes, or 1
    for two classes (scikit-learn's binomial model: class 1's logit against
    class 0's fixed zero). The standardization is folded into the products, never applied to the
    rows: ((x - mean) / scale) W' = x (W / scale)' - mean (W / scale)', and the gradient's
    R' (x - mean) / scale = (R' x - R' 1 mean) / scale (an elementwise pass over a block cost more
    than both products)."""

    def __init__(self, blocks, class_count: int, moments, l2: float):
        self.blocks, self.l2 = blocks, l2
        self.mean = np.asarray(moments[0], np.float64)
        self.scale = standard_scale(moments[1])
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


def preconditioner(sample: np.ndarray, moments) -> np.ndarray:
    """P = (S + RIDGE I)^(-1/2), S = the second moment of the standardized `sample` rows."""
    x = ((sample - moments[0]) / standard_scale(moments[1])).astype(np.float32)
    values, vectors = np.linalg.eigh((x.T @ x).astype(np.float64) / len(x))
    return (vectors / np.sqrt(np.maximum(values, 0) + RIDGE)) @ vectors.T


def minimize(objective: Objective, max_iter: int, precondition: np.ndarray | None = None, log=None):
    """scipy's L-BFGS-B with LogisticRegression's options from zero, over V where W = V P (P =
    `precondition`, or the identity: scikit-learn's own run), stopped as scikit-learn's run stops:
    when W's gradient is under TOL everywhere. Returns (W and intercepts flat, iterations, whether
    it converged); `log(line)` after each iteration, if given."""
    from scipy import optimize
    p = np.eye(objective.width) if precondition is None else precondition
    last = {"at": None, "gradient": np.inf}

    def whitened(v):
        w, b = objective.unpack(v)
        params = np.concatenate([(w @ p).ravel(), b])
        value, gradient = objective(params)
        last["at"], last["gradient"] = v.copy(), float(np.abs(gradient).max())
        grad_w, grad_b = objective.unpack(gradient)
        return value, np.concatenate([(grad_w @ p).ravel(), grad_b])

    def at_tolerance(v) -> bool:                        # scikit-learn's test, on W's gradient at v
        return last["gradient"] <= TOL and np.array_equal(last["at"], v)

    def after_iteration(intermediate_result):          # scipy passes the iterate under this name
        after_iteration.count += 1
        if log:
            log(f"lbfgs iteration {after_iteration.count}: objective {intermediate_result.fun:.6g}, "
                f"{objective.passes} passes")
        if at_tolerance(intermediate_result.x):
            raise StopIteration
    after_iteration.count = 0
    result = optimize.minimize(whitened, objective.start(), method="L-BFGS-B", jac=True, callback=after_iteration,
                               options={"maxiter": max_iter, "maxls": 50, "gtol": 0.0, "ftol": 64 * np.finfo(float).eps})
    w, b = objective.unpack(result.x)
    return np.concatenate([(w @ p).ravel(), b]), after_iteration.count, at_tolerance(result.x)


def as_pipeline(mean, variance, coef, intercept, s: dict, class_count: int):
    """The fitted scikit-learn Pipeline(StandardScaler, LogisticRegression) of these statistics and
    coefficients (coef: (classes, width), or (1, width) for two classes, as scikit-learn's)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    scaler = StandardScaler()
    scaler.mean_, scaler.var_ = np.asarray(mean, np.float64), np.asarray(variance, np.float64)
    scaler.scale_ = standard_scale(scaler.var_)
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
    whiten = preconditioner(streamed_data.spread_sample(split, SAMPLE_ROWS), moments)
    params, iterations, converged = minimize(objective, s["max_iter"], whiten,
                                             log=(lambda line: print(line, flush=True)) if verbose else None)
    coef, intercept = objective.unpack(params)
    pipeline = as_pipeline(*moments, coef, intercept, s, classes)
    pipeline[-1].n_iter_ = np.array([iterations])
    return pipeline, {"converged": converged, "iterations": iterations, "streamed": True,
                      "passes": objective.passes + 1}         # over the file: the solver's and the moments' one
