"""Colour models for the graph cut of paper Sect. 3.2: Gaussian mixtures over RGB, fitted by EM.

The paper fits one colour model to the foreground seeds and one to the background seeds, as
GrabCut (Rother et al. 2004) does, and gives no further detail; we follow GrabCut's form (full
covariances, 5 components by default) with our own vectorised EM, tested against scikit-learn.
The graph cut's unary cost of a pixel is the negative log-likelihood of its colour under the
model of the label it takes (:func:`unaries`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .common import check_photo

__all__ = ["ColourModel", "fit_colour_model", "unaries"]


@dataclass
class ColourModel:
    """A Gaussian mixture over RGB colours (weights (K,), means (K,3), covariances (K,3,3)).

    ``history`` holds the mean log-likelihood of the fitted colours after each EM iteration (EM
    never lowers it; the tests check this).
    """

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    history: tuple[float, ...] = ()

    def log_densities(self, colours: np.ndarray) -> np.ndarray:
        """log(w_k N(colour | mu_k, Sigma_k)) for (..., 3) colours; returns shape (..., K)."""
        x = np.asarray(colours, dtype=np.float64)
        return _log_weighted_densities(x.reshape(-1, 3), self.weights, self.means,
                                       self.covariances).reshape(*x.shape[:-1], -1)

    def neg_log_likelihood(self, colours: np.ndarray) -> np.ndarray:
        """-log p(colour) = -log sum_k w_k N(colour | mu_k, Sigma_k) for (..., 3) colours; shape (...)."""
        return -_logsumexp(self.log_densities(colours))


def unaries(photo: np.ndarray, fg_model: ColourModel, bg_model: ColourModel,
            where: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The graph cut's unary costs U_p: (H,W) -log p(colour | fg) and -log p(colour | bg).

    ``photo`` H x W x 3 in [0, 1]; evaluated only ``where`` (H,W bool; default everywhere), zero
    elsewhere.

    Both models in one product over the pixels' shared quadratic features; the seeds' own unaries
    are never used when they are hard constraints, so they are not computed.
    """
    photo = check_photo(photo)
    if where is None:
        where = np.ones(photo.shape[:2], bool)
    feats = _quadratic_features(photo[where])
    out = []
    for model in (fg_model, bg_model):
        cost = np.zeros(where.shape)
        cost[where] = -_logsumexp(feats @ _coefficients(model.weights, model.means, model.covariances))
        out.append(cost)
    return out[0], out[1]


_LOG_2PI = np.log(2 * np.pi)


def _quadratic_features(x: np.ndarray) -> np.ndarray:
    """(N,10) monomials of (N,3) colours up to degree 2: x0^2, x1^2, x2^2, x0x1, x0x2, x1x2, x0, x1, x2, 1."""
    f = np.empty((len(x), 10))
    f[:, 0:3] = x * x
    f[:, 3] = x[:, 0] * x[:, 1]
    f[:, 4] = x[:, 0] * x[:, 2]
    f[:, 5] = x[:, 1] * x[:, 2]
    f[:, 6:9] = x
    f[:, 9] = 1.0
    return f


def _log_weighted_densities(x: np.ndarray, weights, means, covariances) -> np.ndarray:
    """(N,K) log(w_k N(x_n | mu_k, Sigma_k)) for (N,3) colours, all components in one product.

    log(w N(x | mu, Sigma)) is a quadratic polynomial in x, so for every component it is a fixed
    combination of the 10 monomials of :func:`_quadratic_features`: with the precision P = Sigma^-1,
    -1/2 (x^T P x - 2 (P mu)^T x + mu^T P mu + log det Sigma + 3 log 2 pi) + log w.
    One (N,10) x (10,K) product replaces K solves over the image (float64; colours are in [0, 1]
    and ``reg`` bounds P, so the expansion loses nothing measurable: the tests compare with scipy).
    """
    return _quadratic_features(x) @ _coefficients(weights, means, covariances)


def _coefficients(weights, means, covariances) -> np.ndarray:
    """(10,K): log(w_k N(x | mu_k, Sigma_k)) = :func:`_quadratic_features` (x) @ these."""
    chol = np.linalg.cholesky(covariances)  # (K,3,3), Sigma = L L^T
    inv = np.linalg.inv(chol)
    prec = np.swapaxes(inv, 1, 2) @ inv  # P = L^-T L^-1
    p_mu = np.einsum("kij,kj->ki", prec, means)
    log_det = 2 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(-1)
    with np.errstate(divide="ignore"):  # an emptied component has weight 0: log 0 = -inf is right
        log_w = np.log(weights)
    coef = np.empty((10, len(weights)))
    coef[0:3] = -0.5 * np.diagonal(prec, axis1=1, axis2=2).T
    coef[3], coef[4], coef[5] = -prec[:, 0, 1], -prec[:, 0, 2], -prec[:, 1, 2]
    coef[6:9] = p_mu.T
    coef[9] = log_w - 0.5 * ((p_mu * means).sum(1) + log_det + 3 * _LOG_2PI)
    return coef


def _logsumexp(a: np.ndarray) -> np.ndarray:
    m = a.max(-1, keepdims=True)
    return m[..., 0] + np.log(np.exp(a - m).sum(-1))


def _m_step(x: np.ndarray, resp: np.ndarray, reg: float):
    """Weights, means and covariances (+ ``reg`` I) from (N,K) responsibilities."""
    nk = resp.sum(0) + 10 * np.finfo(float).eps
    means = resp.T @ x / nk[:, None]
    # E_k[x x^T] - mu mu^T as one batched product (colours in [0, 1]: no harmful cancellation)
    second = (resp.T[:, :, None] * x[None]).transpose(0, 2, 1) @ x / nk[:, None, None]
    cov = second - means[:, :, None] * means[:, None, :] + reg * np.eye(3)
    return nk / nk.sum(), means, cov


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): (k,3) centres drawn from ``x``."""
    centres = [x[rng.integers(len(x))]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = d2.sum()
        # all points equal to a chosen centre: any choice is as good (the covariance floor keeps it valid)
        i = rng.choice(len(x), p=d2 / total) if total > 0 else rng.integers(len(x))
        centres.append(x[i])
        d2 = np.minimum(d2, ((x - x[i]) ** 2).sum(1))
    return np.stack(centres)


def fit_colour_model(
    colours: np.ndarray,
    components: int = 5,
    *,
    max_samples: int | None = 1000,
    max_iter: int = 10,
    tol: float = 1e-3,
    reg: float = 1e-4,
    seed: int = 0,
) -> ColourModel:
    """Fit a full-covariance Gaussian mixture to (P,3) colours by EM (the GrabCut colour model).

    Initialised as scikit-learn's ``GaussianMixture(init_params="k-means++")``: k-means++ centres,
    each colour assigned to its nearest centre, one M-step; then EM until the mean log-likelihood
    gains less than ``tol`` or ``max_iter`` iterations. ``reg`` is added to every covariance's
    diagonal (colours in [0, 1]; it keeps a component on a flat colour region invertible).

    ``max_samples`` draws at most that many seed pixels at random before fitting. The defaults
    (1000 samples, 10 iterations) are a speed/quality trade measured by ``benchmarks/run.py``: the
    cut's masks against an unhurried fit (every seed pixel, up to 200 iterations). The tests
    compare this EM with scikit-learn's on the same data.

    With fewer than ``2 * components`` pixels the component count is reduced to
    ``len(colours) // 2`` (a documented fallback); with fewer than 2 pixels, ``ValueError``.
    """
    x = np.asarray(colours, dtype=np.float64).reshape(-1, 3)
    n = len(x)
    if n < 2:
        raise ValueError(f"only {n} seed pixel(s): too few to fit a colour model")
    if not np.isfinite(x).all():
        raise ValueError("colours contain NaN or infinite values")
    k = min(components, n // 2)
    rng = np.random.default_rng(seed)
    if max_samples is not None and n > max_samples:
        x = x[rng.choice(n, max_samples, replace=False)]
    centres = _kmeans_pp(x, k, rng)
    nearest = ((x[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
    weights, means, cov = _m_step(x, np.eye(k)[nearest], reg)
    history: list[float] = []
    for _ in range(max_iter):
        log_p = _log_weighted_densities(x, weights, means, cov)  # E-step
        log_total = _logsumexp(log_p)
        history.append(float(log_total.mean()))
        weights, means, cov = _m_step(x, np.exp(log_p - log_total[:, None]), reg)  # M-step
        if len(history) > 1 and history[-1] - history[-2] < tol:
            break
    return ColourModel(weights, means, cov, tuple(history))
