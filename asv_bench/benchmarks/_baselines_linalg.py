"""Linear-algebra workloads of issue 19 and their hand-written baselines.

Shared by ``bench_linalg.py`` (asv) and ``asv_bench/compare_peers.py`` (imported as
``benchmarks._baselines_linalg``), like ``_baselines.py``; it defines no names starting
with ``time_``/``track_``/``mem_``/``peakmem_``, so asv collects nothing from it.

Workloads (value and gradient)
------------------------------
logreg      mean log-loss + L2 of a logistic regression, X (m, k) and labels y as data;
            also at many parameter vectors sharing one X (``logreg_many_vg``)
mlp         16-32-1 tanh network, 256 samples, mean squared error; its 577 weights are
            one flat vector unpacked inside the loss
gp          Gaussian-process negative log marginal likelihood, n 1-D inputs,
            squared-exponential kernel, gradient in (log amplitude, log length scale,
            log noise)
solve3      sum of squares of the solution of a 3x3 system built from a point's 12
            inputs, at many points

For each: the plain-numpy loss a user writes (what tapejit records), the data, a
baseline with the gradient written by hand (numpy/scipy, or ``@njit`` for ``solve3``)
and a JAX peer (``make_jax_*``: ``None`` when jax is not importable).
"""

import math

import numpy as np
from numba import njit, prange

from ._baselines import _jax

LOGREG_LAM = 1e-2
MLP_IN, MLP_HIDDEN, MLP_SAMPLES = 16, 32, 256
MLP_N_WEIGHTS = MLP_IN * MLP_HIDDEN + 2 * MLP_HIDDEN + 1  # W1, b1, W2, b2: 577
GP_THETA = (0.0, math.log(0.7), math.log(0.1))  # log amplitude, length scale, noise
SOLVE3_SHIFT = 3.0  # added to the diagonal so every 3x3 system is well conditioned

# ---------------------------------------------------------------------------
# Plain-numpy losses (what a user writes; what tapejit records)
# ---------------------------------------------------------------------------


def logreg_f(w, X, y):
    """Mean log-loss of labels ``y`` in {0, 1} under logits ``X @ w``, plus L2."""
    z = X @ w
    return np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * LOGREG_LAM * np.sum(w * w)


def _mlp_unpack(theta):
    nw = MLP_IN * MLP_HIDDEN
    W1 = theta[:nw].reshape(MLP_IN, MLP_HIDDEN)
    b1 = theta[nw:nw + MLP_HIDDEN]
    W2 = theta[nw + MLP_HIDDEN:nw + 2 * MLP_HIDDEN]
    return W1, b1, W2, theta[-1]


def mlp_f(theta, X, t):
    """Mean squared error of a 16-32-1 tanh network with flat weights ``theta``."""
    W1, b1, W2, b2 = _mlp_unpack(theta)
    out = np.tanh(X @ W1 + b1) @ W2 + b2
    return np.mean((out - t) ** 2)


def gp_nlml_f(theta, x, y):
    """Negative log marginal likelihood of ``y`` at inputs ``x`` (both (n,))."""
    n = x.shape[0]
    d2 = (x[:, None] - x[None, :]) ** 2
    K = np.exp(2.0 * theta[0]) * np.exp(-0.5 * d2 * np.exp(-2.0 * theta[1]))
    K = K + np.exp(2.0 * theta[2]) * np.eye(n)
    L = np.linalg.cholesky(K)
    a = np.linalg.solve(L, y)  # y^T K^{-1} y = |L^{-1} y|^2
    return 0.5 * np.sum(a * a) + np.sum(np.log(np.diagonal(L))) + 0.5 * n * math.log(2 * math.pi)


def solve3_f(p):
    """``sum(solve(A, b)**2)`` with ``A = p[:9] + 3 I`` (row-major), ``b = p[9:]``."""
    A = p[:9].reshape(3, 3) + SOLVE3_SHIFT * np.eye(3)
    s = np.linalg.solve(A, p[9:])
    return np.sum(s * s)


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def logreg_data(m, k, seed=0):
    """``(w0, X, y)``: standard-normal features, labels drawn from a true model."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, k))
    w_true = rng.standard_normal(k) / math.sqrt(k)
    y = (rng.random(m) < 1.0 / (1.0 + np.exp(-X @ w_true))).astype(np.float64)
    return 0.1 * rng.standard_normal(k), X, y


def logreg_many_points(n, k, seed=1):
    """``(n, k)`` parameter vectors around zero."""
    return 0.1 * np.random.default_rng(seed).standard_normal((n, k))


def mlp_data(seed=0):
    """``(theta0, X, t)``: weights of Glorot scale, inputs, a smooth target."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((MLP_SAMPLES, MLP_IN))
    t = np.sin(X[:, 0]) + 0.5 * X[:, 1] * X[:, 2]
    theta = np.concatenate([
        rng.standard_normal(MLP_IN * MLP_HIDDEN) / math.sqrt(MLP_IN),
        np.zeros(MLP_HIDDEN),
        rng.standard_normal(MLP_HIDDEN) / math.sqrt(MLP_HIDDEN),
        np.zeros(1),
    ])
    return theta, X, t


def gp_data(n, seed=0):
    """``(theta, x, y)``: sorted inputs on [0, 10], a noisy sine."""
    rng = np.random.default_rng(seed)
    x = np.sort(rng.uniform(0.0, 10.0, n))
    y = np.sin(x) + 0.1 * rng.standard_normal(n)
    return np.array(GP_THETA), x, y


def solve3_points(n, seed=0):
    """``(n, 12)`` points: matrix entries and right-hand sides of modest size."""
    return 0.5 * np.random.default_rng(seed).standard_normal((n, 12))


# ---------------------------------------------------------------------------
# Hand-written gradients
# ---------------------------------------------------------------------------


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow warning for large |z|


def _softplus(z):
    """``log(1 + exp(z))``, stable; numpy's ``logaddexp`` is several times slower."""
    return np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z)))


def logreg_vg(w, X, y):
    """numpy: value and ``X.T @ (sigmoid(X w) - y) / m + lam w``."""
    z = X @ w
    v = np.mean(_softplus(z) - y * z) + 0.5 * LOGREG_LAM * (w @ w)
    g = X.T @ (_sigmoid(z) - y) / X.shape[0] + LOGREG_LAM * w
    return v, g


def logreg_many_vg(W, X, y):
    """numpy, all parameter vectors ``W`` (n, k) at once: two matrix products."""
    Z = W @ X.T
    v = np.mean(_softplus(Z) - y * Z, axis=1) + 0.5 * LOGREG_LAM * np.sum(W * W, axis=1)
    G = (_sigmoid(Z) - y) @ X / X.shape[0] + LOGREG_LAM * W
    return v, G


def mlp_vg(theta, X, t):
    """numpy backpropagation through the 16-32-1 tanh network."""
    W1, b1, W2, b2 = _mlp_unpack(theta)
    h = np.tanh(X @ W1 + b1)
    r = h @ W2 + b2 - t
    v = np.mean(r * r)
    dr = (2.0 / X.shape[0]) * r
    dz = np.outer(dr, W2) * (1.0 - h * h)
    g = np.concatenate([(X.T @ dz).ravel(), dz.sum(axis=0), h.T @ dr, [dr.sum()]])
    return v, g


def gp_nlml_vg(theta, x, y):
    """numpy/scipy: Cholesky of K, then ``0.5 tr((K^{-1} - a a^T) dK/dtheta)``."""
    from scipy.linalg import cho_factor, cho_solve

    n = x.shape[0]
    d2 = (x[:, None] - x[None, :]) ** 2
    Kf = np.exp(2.0 * theta[0]) * np.exp(-0.5 * d2 * np.exp(-2.0 * theta[1]))
    noise2 = np.exp(2.0 * theta[2])
    K = Kf + noise2 * np.eye(n)
    c = cho_factor(K, lower=True)
    a = cho_solve(c, y)
    v = 0.5 * (y @ a) + np.sum(np.log(np.diag(c[0]))) + 0.5 * n * math.log(2 * math.pi)
    W = cho_solve(c, np.eye(n)) - np.outer(a, a)
    WKf = np.sum(W * Kf)
    g = np.array([WKf, 0.5 * np.sum(W * Kf * d2) * np.exp(-2.0 * theta[1]),
                  np.trace(W) * noise2])
    return v, g


@njit(cache=True, parallel=True)
def solve3_vg_batch(P, V, G):
    """``@njit`` over points: 3x3 inverse by cofactors, then the adjoint solve by hand.

    With ``s = A^{-1} b`` and ``f = s.s``: ``lam = A^{-T} 2 s``, ``df/db = lam`` and
    ``df/dA = -lam s^T``.
    """
    for i in prange(P.shape[0]):
        a = P[i, 0] + SOLVE3_SHIFT
        b = P[i, 1]
        c = P[i, 2]
        d = P[i, 3]
        e = P[i, 4] + SOLVE3_SHIFT
        f = P[i, 5]
        g = P[i, 6]
        h = P[i, 7]
        k = P[i, 8] + SOLVE3_SHIFT
        c00 = e * k - f * h
        c01 = f * g - d * k
        c02 = d * h - e * g
        r = 1.0 / (a * c00 + b * c01 + c * c02)
        # inverse = adjugate / det (the adjugate is the transposed cofactor matrix)
        i00 = c00 * r
        i10 = c01 * r
        i20 = c02 * r
        i01 = (c * h - b * k) * r
        i11 = (a * k - c * g) * r
        i21 = (b * g - a * h) * r
        i02 = (b * f - c * e) * r
        i12 = (c * d - a * f) * r
        i22 = (a * e - b * d) * r
        r0 = P[i, 9]
        r1 = P[i, 10]
        r2 = P[i, 11]
        s0 = i00 * r0 + i01 * r1 + i02 * r2
        s1 = i10 * r0 + i11 * r1 + i12 * r2
        s2 = i20 * r0 + i21 * r1 + i22 * r2
        V[i] = s0 * s0 + s1 * s1 + s2 * s2
        l0 = 2.0 * (i00 * s0 + i10 * s1 + i20 * s2)
        l1 = 2.0 * (i01 * s0 + i11 * s1 + i21 * s2)
        l2 = 2.0 * (i02 * s0 + i12 * s1 + i22 * s2)
        G[i, 0] = -l0 * s0
        G[i, 1] = -l0 * s1
        G[i, 2] = -l0 * s2
        G[i, 3] = -l1 * s0
        G[i, 4] = -l1 * s1
        G[i, 5] = -l1 * s2
        G[i, 6] = -l2 * s0
        G[i, 7] = -l2 * s1
        G[i, 8] = -l2 * s2
        G[i, 9] = l0
        G[i, 10] = l1
        G[i, 11] = l2


def solve3_vg_reference(P):
    """numpy reference for ``solve3_vg_batch`` (batched ``np.linalg.solve``)."""
    A = P[:, :9].reshape(-1, 3, 3) + SOLVE3_SHIFT * np.eye(3)
    s = np.linalg.solve(A, P[:, 9:, None])[..., 0]
    lam = np.linalg.solve(np.swapaxes(A, 1, 2), 2.0 * s[..., None])[..., 0]
    G = np.concatenate([-(lam[:, :, None] * s[:, None, :]).reshape(-1, 9), lam], axis=1)
    return np.sum(s * s, axis=1), G


def compile_all():
    """Compile (or load from cache) the ``@njit`` baselines outside any timing."""
    P = solve3_points(4)
    solve3_vg_batch(P, np.empty(4), np.empty((4, 12)))


# ---------------------------------------------------------------------------
# JAX peers: jit(value_and_grad), x64; callables block until the result is ready
# ---------------------------------------------------------------------------


def _jit_vg(loss, *, many=False, shared=0):
    """``jit(value_and_grad(loss))``, vmapped over the first argument when ``many``
    (the ``shared`` arguments after it are not mapped)."""
    jax = _jax()
    if jax is None:
        return None
    vg = jax.value_and_grad(loss)
    if many:
        vg = jax.vmap(vg, in_axes=(0,) + (None,) * shared)
    fn = jax.jit(vg)
    return lambda *args: jax.block_until_ready(fn(*args))


def _jax_logreg(w, X, y):
    import jax.numpy as jnp

    z = X @ w
    return jnp.mean(jnp.logaddexp(0.0, z) - y * z) + 0.5 * LOGREG_LAM * jnp.sum(w * w)


def _jax_mlp(theta, X, t):
    import jax.numpy as jnp

    W1, b1, W2, b2 = _mlp_unpack(theta)
    out = jnp.tanh(X @ W1 + b1) @ W2 + b2
    return jnp.mean((out - t) ** 2)


def _jax_gp(theta, x, y):
    import jax.numpy as jnp
    from jax.scipy.linalg import solve_triangular

    n = x.shape[0]
    d2 = (x[:, None] - x[None, :]) ** 2
    K = jnp.exp(2.0 * theta[0]) * jnp.exp(-0.5 * d2 * jnp.exp(-2.0 * theta[1]))
    K = K + jnp.exp(2.0 * theta[2]) * jnp.eye(n)
    L = jnp.linalg.cholesky(K)
    a = solve_triangular(L, y, lower=True)
    return 0.5 * jnp.sum(a * a) + jnp.sum(jnp.log(jnp.diag(L))) + 0.5 * n * math.log(2 * math.pi)


def _jax_solve3(p):
    import jax.numpy as jnp

    A = p[:9].reshape(3, 3) + SOLVE3_SHIFT * jnp.eye(3)
    s = jnp.linalg.solve(A, p[9:])
    return jnp.sum(s * s)


def make_jax_logreg():
    """``(w, X, y) -> (value, grad)``."""
    return _jit_vg(_jax_logreg)


def make_jax_logreg_many():
    """``(W (n, k), X, y) -> (values (n,), grads (n, k))``, X and y shared."""
    return _jit_vg(_jax_logreg, many=True, shared=2)


def make_jax_mlp():
    """``(theta, X, t) -> (value, grad)``."""
    return _jit_vg(_jax_mlp)


def make_jax_gp():
    """``(theta, x, y) -> (value, grad)``."""
    return _jit_vg(_jax_gp)


def make_jax_solve3():
    """``P (n, 12) -> (values (n,), grads (n, 12))``."""
    return _jit_vg(_jax_solve3, many=True)
