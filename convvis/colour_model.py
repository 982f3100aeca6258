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
import torch

from .common import check_photo

__all__ = ["ColourModel", "fit_colour_model", "unaries", "fit_colour_models", "fit_colour_model_groups",
           "log_density_coefficients", "mixture_costs"]


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


# ---- the same EM for many colour sets at once, in torch (the batched localisation path) ---------


def _t_quadratic_features(x):
    """:func:`_quadratic_features` for (..., 3) tensors: (..., 10), in the same column order."""
    return torch.cat([x * x, (x[..., 0] * x[..., 1])[..., None], (x[..., 0] * x[..., 2])[..., None],
                      (x[..., 1] * x[..., 2])[..., None], x, torch.ones_like(x[..., :1])], -1)


def log_density_coefficients(weights, means, covariances):
    """(B,10,K) coefficients: log(w_k N(x | mu_k, Sigma_k)) = quadratic features of x @ these.

    The batched twin of the one-model expansion :func:`fit_colour_model` uses: ``weights`` (B,K),
    ``means`` (B,K,3), ``covariances`` (B,K,3,3) tensors; the features of a colour x in [0, 1]^3 are
    x0^2, x1^2, x2^2, x0x1, x0x2, x1x2, x0, x1, x2, 1. A component of weight 0 gets log 0 = -inf.
    """
    chol = torch.linalg.cholesky(covariances)
    eye = torch.eye(3, dtype=chol.dtype, device=chol.device).expand_as(chol)
    inv = torch.linalg.solve_triangular(chol, eye, upper=False)  # L^-1
    prec = inv.transpose(-1, -2) @ inv
    p_mu = (prec @ means[..., None])[..., 0]
    log_det = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    coef = torch.cat([
        -0.5 * torch.diagonal(prec, dim1=-2, dim2=-1),
        -prec[..., 0, 1, None], -prec[..., 0, 2, None], -prec[..., 1, 2, None],
        p_mu,
        (torch.log(weights) - 0.5 * ((p_mu * means).sum(-1) + log_det + 3 * _LOG_2PI))[..., None],
    ], -1)  # (B,K,10)
    return coef.transpose(-1, -2)


def _t_logsumexp(a):
    m = a.amax(-1, keepdim=True)  # torch.logsumexp is slow on a short last axis on the CPU
    return m[..., 0] + (a - m).exp().sum(-1).log()


def _t_m_step(x, quad, resp, reg):
    """Batched :func:`_m_step`; ``quad`` (B,m,6) the colours' products x0^2, x1^2, x2^2, x0x1, x0x2, x1x2."""
    nk = resp.sum(1) + 10 * torch.finfo(x.dtype).eps  # (B,K)
    rt = resp.transpose(1, 2)
    means = rt @ x / nk[..., None]
    s = rt @ quad / nk[..., None]  # E_k[x_i x_j], the 6 distinct ones
    second = torch.stack([s[..., 0], s[..., 3], s[..., 4], s[..., 3], s[..., 1], s[..., 5],
                          s[..., 4], s[..., 5], s[..., 2]], -1).unflatten(-1, (3, 3))
    cov = second - means[..., :, None] * means[..., None, :]
    cov = cov + reg * torch.eye(3, dtype=x.dtype, device=x.device)
    return nk / nk.sum(-1, keepdim=True), means, cov


def initial_assignments(colours: np.ndarray, k: int, state: dict) -> np.ndarray:
    """EM's starting point for B colour sets, on the host: (B,m,3) float64 -> (B,m) int64.

    Each set gets :func:`convvis.fit_colour_model`'s initialisation, k-means++ centres drawn from a
    generator restored to ``state`` (the same generator state for every set), and each colour goes
    to its nearest centre. It stays in NumPy on every device, so that the draws are the reference's
    exactly. Every set starting from one state draws the same numbers, so the sets are seeded
    together: one first index for all, then per step one uniform number, turned into each set's
    index by its own cumulative distribution as ``Generator.choice`` does (the same float64
    operations per row, hence the same indices as a loop over the sets; a test compares them). In
    a set whose distances all become 0 the loop takes ``_kmeans_pp``'s other branch and draws
    differently, but every colour then sits on an earlier centre, which ``argmin`` keeps: the
    assignments are the same. A set whose distances are not finite runs the loop, which raises.
    """
    colours = np.asarray(colours, dtype=np.float64)  # Generator.choice works in float64
    b, m, _ = colours.shape
    g = np.random.default_rng()
    g.bit_generator.state = state
    rows = np.arange(b)
    planes = np.ascontiguousarray(colours.transpose(2, 0, 1))  # (3,B,m): whole rows per channel

    def dist2(centre):  # (B,3) -> (B,m): the reference's ((x - c) ** 2).sum(-1), in its order
        d = planes - centre.T[:, :, None]
        d *= d
        return d[0] + d[1] + d[2]

    centres = [colours[:, g.integers(m)]]  # (B,3) each
    d2 = dist2(centres[0])
    alone = np.zeros(b, bool)  # sets with non-finite distances: the loop below raises its error
    for _ in range(1, k):
        total = d2.sum(1)
        alone |= ~np.isfinite(total)
        with np.errstate(invalid="ignore", divide="ignore"):
            cdf = np.cumsum(d2 / total[:, None], axis=1)
            cdf /= cdf[:, -1:]
        u = g.random()
        pick = np.minimum((cdf <= u).sum(1), m - 1)  # searchsorted(side="right") on each row
        centres.append(colours[rows, pick])
        d2 = np.minimum(d2, dist2(centres[-1]))
    nearest = np.stack([dist2(c) for c in centres], -1).argmin(-1)
    for i in np.flatnonzero(alone):
        g.bit_generator.state = state
        c = _kmeans_pp(colours[i], k, g)
        nearest[i] = ((colours[i][:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
    return nearest


def _check_colours(colours) -> None:
    if colours.ndim != 3 or colours.shape[-1] != 3:
        raise ValueError(f"expected (B,P,3) colours, got {tuple(colours.shape)}")
    if colours.shape[1] < 2:
        raise ValueError(f"only {colours.shape[1]} seed pixel(s): too few to fit a colour model")


def fit_colour_models(
    colours,
    components: int = 5,
    *,
    max_samples: int | None = 1000,
    max_iter: int = 10,
    tol: float = 1e-3,
    reg: float = 1e-4,
    seed: int = 0,
    engine: str = "auto",
) -> dict:
    """:func:`fit_colour_model` on B colour sets of equal size at once: (B,P,3) tensor -> dict.

    ``engine``: ``"torch"`` (batched EM on the colours' device; the default, ``"auto"``) or
    ``"numpy"`` (:func:`fit_colour_model` on each set in turn, the reference itself). With one
    torch thread the batched EM took 0.13-0.15 s for 80 sets of 2509 colours on this project's
    2-core CPU, the NumPy loop 0.27-0.34 s; with two threads on the same busy machine the batched
    EM took 0.8-1.6 s (its arrays are small: threads cost more than they bring), so
    :func:`convvis.prepare_cuts` runs it with one thread on a CPU.

    Returns ``weights`` (B,K), ``means`` (B,K,3), ``covariances`` (B,K,3,3) (tensors on the
    colours' device) and ``history`` (B, max_iter) NumPy float64, the mean log-likelihood after each
    EM iteration, NaN after a set has stopped.
    """
    return fit_colour_model_groups([colours], components, max_samples=max_samples, max_iter=max_iter,
                                   tol=tol, reg=reg, seed=seed, engine=engine)[0]


def fit_colour_model_groups(
    groups,
    components: int = 5,
    *,
    max_samples: int | None = 1000,
    max_iter: int = 10,
    tol: float = 1e-3,
    reg: float = 1e-4,
    seed: int = 0,
    engine: str = "auto",
) -> list[dict]:
    """:func:`convvis.fit_colour_models` on each of several groups of colour sets: a list of (B_i,P_i,3)
    tensors on one device -> a list of its dicts, the same fits (a test compares them).

    Each group is subsampled and started exactly as :func:`convvis.fit_colour_models` would (its own
    generator from ``seed``); groups whose subsamples then have the same size, component count,
    dtype and device run one EM together. That is what a GPU needs: the EM is many small
    operations, and issuing them costs the host more than the device's arithmetic, so the
    foreground and background models of a batch (:func:`convvis.prepare_cuts`) are fitted with one
    set of operations instead of two.
    """
    if not groups:
        return []
    for colours in groups:
        _check_colours(colours)
    if not bool(torch.stack([torch.isfinite(c).all() for c in groups]).all()):  # one host read
        raise ValueError("colours contain NaN or infinite values")
    if engine not in ("auto", "torch", "numpy"):
        raise ValueError(f"engine must be 'auto', 'torch' or 'numpy', not {engine!r}")
    if engine == "numpy":
        return [_fit_numpy(c, components, max_samples, max_iter, tol, reg, seed) for c in groups]
    starts = [_start(c, components, max_samples, seed) for c in groups]
    out: list = [None] * len(groups)
    together: dict = {}  # (subsample size, K, dtype, device) -> the groups that can share an EM
    for i, (x, resp) in enumerate(starts):
        together.setdefault((*resp.shape[1:], x.dtype, x.device), []).append(i)
    for members in together.values():
        x = torch.cat([starts[i][0] for i in members])
        resp = torch.cat([starts[i][1] for i in members])
        fit = _batched_em(x, resp, max_iter, tol, reg)
        offset = 0
        for i in members:
            b = starts[i][0].shape[0]
            out[i] = {key: v[offset:offset + b] for key, v in fit.items()}
            offset += b
    return out


def _fit_numpy(colours, components, max_samples, max_iter, tol, reg, seed) -> dict:
    fits = [fit_colour_model(c, components, max_samples=max_samples, max_iter=max_iter, tol=tol,
                             reg=reg, seed=seed) for c in colours.detach().cpu().numpy()]
    history = np.full((len(fits), max_iter), np.nan)
    for i, f in enumerate(fits):
        history[i, : len(f.history)] = f.history

    def stack(key):
        return torch.as_tensor(np.stack([getattr(f, key) for f in fits]), device=colours.device)

    return {"weights": stack("weights"), "means": stack("means"), "covariances": stack("covariances"),
            "history": history}


def _start(colours, components, max_samples, seed):
    """The subsample and the k-means++ responsibilities of B sets: (B,m,3) colours, (B,m,K) one-hot."""
    _, n, _ = colours.shape
    k = min(components, n // 2)
    rng = np.random.default_rng(seed)
    x = colours
    if max_samples is not None and n > max_samples:
        x = colours[:, torch.as_tensor(rng.choice(n, max_samples, replace=False), device=colours.device)]
    nearest = initial_assignments(x.detach().cpu().numpy().astype(np.float64), k, rng.bit_generator.state)
    return x, torch.nn.functional.one_hot(torch.as_tensor(nearest, device=x.device), k).to(x.dtype)


def _batched_em(x, resp, max_iter, tol, reg) -> dict:
    """EM from the responsibilities ``resp`` (B,m,K) on colours ``x`` (B,m,3), each set stopping on
    its own as :func:`fit_colour_model` does (a stopped set's model is kept, its history NaN)."""
    b = x.shape[0]
    feats = _t_quadratic_features(x)  # (B,m,10)
    weights, means, cov = _t_m_step(x, feats[..., :6], resp, reg)
    history = torch.full((b, max_iter), float("nan"), dtype=torch.float64, device=x.device)
    active = torch.ones(b, dtype=torch.bool, device=x.device)
    for it in range(max_iter):
        log_p = feats @ log_density_coefficients(weights, means, cov)  # E-step, (B,m,K)
        log_total = _t_logsumexp(log_p)
        ll = log_total.mean(1).to(torch.float64)
        history[:, it] = torch.where(active, ll, history[:, it])
        new = _t_m_step(x, feats[..., :6], torch.exp(log_p - log_total[..., None]), reg)  # M-step
        a = active[:, None]
        weights = torch.where(a, new[0], weights)
        means = torch.where(a[..., None], new[1], means)
        cov = torch.where(a[..., None, None], new[2], cov)
        if it > 0:
            active = active & ~(history[:, it] - history[:, it - 1] < tol)
        if it + 1 < max_iter and not bool(active.any()):
            break
    return {"weights": weights, "means": means, "covariances": cov, "history": history.cpu().numpy()}


def mixture_costs(colours, coefficients):
    """-log p(colour) under M mixtures per image: (n,P,3) colours, (n,M,10,K) -> (n,M,P) tensor.

    ``coefficients`` from :func:`log_density_coefficients` (shape (B,10,K), B = n * M, reshaped);
    the batched form of :func:`unaries`: one (M*K, 10) x (10, P) product per image, laid out with
    the pixels last so the sums over the K components run along whole rows (on a CPU, torch's
    reductions over a short last axis cost several times more).
    """
    n, m, ten, k = coefficients.shape
    coef = coefficients.permute(0, 1, 3, 2).reshape(n, m * k, ten)
    out = []
    for i in range(n):  # one image at a time: (M*K, P) stays small on a CPU
        lp = (coef[i] @ _t_quadratic_features(colours[i]).T).reshape(m, k, -1)
        top = lp.amax(1)
        out.append(-(top + (lp - top[:, None]).exp().sum(1).log()))
    return torch.stack(out)
