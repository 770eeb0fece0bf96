"""Hand-written baselines and peer-library implementations of the tapejit
benchmark workloads.

This module is the single home of the baselines.  It lives inside the asv
``benchmarks`` package so that ``bench_core.py`` can import it with a relative
import, and ``asv_bench/compare_peers.py`` imports it as
``benchmarks._baselines``.  It deliberately defines no names starting with
``time_``/``track_``/``mem_``/``peakmem_``, so asv does not collect anything
from it.

Workloads
---------
seed       y = ln(x1) + x1*x2 - sin(x2)                     (2 inputs, batched)
rosen2     100*(x1 - x0**2)**2 + (1 - x0)**2               (2-vector, single point)
rosen_ext  sum(100*(x[1:] - x[:-1]**2)**2 + (1 - x[:-1])**2) (n-vector, single point)
sinfit     L(w) = mean((sin(w*x_i) - y_i)**2), 200 points, + 1000 GD steps
lorenz     RK4 steps of the Lorenz system in (sigma, rho, beta), scalar Python code
recurrence a = sin(a)*b + 0.1*a; b = 0.9*b + 0.01*a*a for k steps, scalar code

Numba functions are compiled with ``cache=True``.  Peer implementations
(JAX, CasADi, autograd) are built by ``make_*`` helpers that import the peer
lazily and return ``None`` when it is not importable.
"""

import math

import numpy as np
from numba import njit, prange

# ---------------------------------------------------------------------------
# Plain-numpy reference functions (what a user writes; what tapejit records)
# ---------------------------------------------------------------------------


def seed_f(x1, x2):
    return np.log(x1) + x1 * x2 - np.sin(x2)


def rosen2_f(x):
    return 100.0 * (x[1] - x[0] ** 2) ** 2 + (1.0 - x[0]) ** 2


def rosen_ext_f(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


#: The Lorenz fit of issue #22: RK4 steps of the Lorenz system from (1, 1, 1), the
#: squared distance of the end point from (1, 2, 3), differentiated in the parameters.
LORENZ_STEPS = 2000
LORENZ_H = 0.005
LORENZ_P = (10.0, 28.0, 8.0 / 3.0)


def _lorenz_rhs(x, y, z, sigma, rho, beta):
    return sigma * (y - x), x * (rho - z) - y, x * y - beta * z


def lorenz_step(x, y, z, sigma, rho, beta, h=LORENZ_H):
    """One RK4 step, written with scalars (any number type: floats, tracers, SX)."""
    k1 = _lorenz_rhs(x, y, z, sigma, rho, beta)
    k2 = _lorenz_rhs(x + h / 2 * k1[0], y + h / 2 * k1[1], z + h / 2 * k1[2], sigma, rho, beta)
    k3 = _lorenz_rhs(x + h / 2 * k2[0], y + h / 2 * k2[1], z + h / 2 * k2[2], sigma, rho, beta)
    k4 = _lorenz_rhs(x + h * k3[0], y + h * k3[1], z + h * k3[2], sigma, rho, beta)
    return (x + h / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0]),
            y + h / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1]),
            z + h / 6 * (k1[2] + 2 * k2[2] + 2 * k3[2] + k4[2]))


def lorenz_f(p, steps=LORENZ_STEPS):
    x, y, z = 1.0, 1.0, 1.0
    for _ in range(steps):
        x, y, z = lorenz_step(x, y, z, p[0], p[1], p[2])
    return (x - 1.0) ** 2 + (y - 2.0) ** 2 + (z - 3.0) ** 2


def lorenz_scan_f(p, steps=LORENZ_STEPS, checkpoint=None):
    """:func:`lorenz_f` with its steps in ``tapejit.scan``: the body recorded once."""
    import tapejit

    def body(s, _):
        return lorenz_step(s[0], s[1], s[2], p[0], p[1], p[2]), None

    (x, y, z), _ = tapejit.scan(body, (1.0, 1.0, 1.0), length=steps, checkpoint=checkpoint)
    return (x - 1.0) ** 2 + (y - 2.0) ** 2 + (z - 3.0) ** 2


def lorenz_points(n, seed=0):
    return np.asarray(LORENZ_P) * np.random.default_rng(seed).uniform(0.95, 1.05, (n, 3))


#: The COPS hanging chain of issue #23: N links of total length CHAIN_LENGTH between
#: (0, 1) and (1, 3), points z = (x_0..x_N, y_0..y_N).
CHAIN_LENGTH = 4.0


def hanging_chain(N, length=CHAIN_LENGTH):
    """``(energy, links, z0, lb, ub)``: the potential energy to minimize, the link
    equations ``links(z) == 0``, the starting point (a parabola) and the bounds that fix
    the end points."""

    def energy(z):
        y = z[N + 1 :]
        return np.sum(y[:-1] + y[1:]) / (2 * N)

    def links(z):
        x, y = z[: N + 1], z[N + 1 :]
        return (x[1:] - x[:-1]) ** 2 + (y[1:] - y[:-1]) ** 2 - (length / N) ** 2

    t = np.linspace(0.0, 1.0, N + 1)
    z0 = np.concatenate([t, 1.0 + 2.0 * t - 4.0 * t * (1.0 - t)])
    lb = np.full(2 * N + 2, -np.inf)
    ub = np.full(2 * N + 2, np.inf)
    for i, v in ((0, 0.0), (N, 1.0), (N + 1, 1.0), (2 * N + 1, 3.0)):
        lb[i] = ub[i] = v
    return energy, links, z0, lb, ub


def sinfit_f(w, x, y):
    return np.mean((np.sin(w * x) - y) ** 2)


def sinfit_f_sum(w, x, y):
    """Same loss as ``sinfit_f`` written without ``np.mean``."""
    return np.sum((np.sin(w * x) - y) ** 2) / x.shape[0]


LORENZ_P0 = np.array(LORENZ_P)


def recurrence_f(x, k=1000):
    """The scalar recurrence of issue 22, ``k`` steps from ``(x[0], x[1])``."""
    a, b = x[0], x[1]
    for _ in range(k):
        a = np.sin(a) * b + 0.1 * a
        b = 0.9 * b + 0.01 * a * a
    return a + b


RECURRENCE_X0 = np.array([0.5, 1.2])


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------

SINFIT_N = 200
SINFIT_STEPS = 1000
SINFIT_LR = 0.1
SINFIT_W0 = 1.0
SINFIT_W_TRUE = 1.5
ROSEN2_X0 = (-1.2, 1.0)


def seed_points(n, seed=0):
    """(n, 2) float64 points with x1 > 0 (needed by log)."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.5, 2.5, size=(n, 2))


def rosen2_point():
    return np.array(ROSEN2_X0, dtype=np.float64)


def rosen_ext_point(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.5, size=n)


def sinfit_data(n=SINFIT_N, seed=0):
    """x_i on [0, 3], y_i = sin(1.5 x_i) + small noise."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 3.0, n)
    y = np.sin(SINFIT_W_TRUE * x) + 0.05 * rng.standard_normal(n)
    return x, y


# ---------------------------------------------------------------------------
# Hand-written Numba: seed
# ---------------------------------------------------------------------------


@njit(cache=True)
def seed_vg_point(x):
    """Single point: x (2,) -> (value, grad (2,)) (allocates grad)."""
    x1 = x[0]
    x2 = x[1]
    g = np.empty(2)
    g[0] = 1.0 / x1 + x2
    g[1] = x1 - math.cos(x2)
    return math.log(x1) + x1 * x2 - math.sin(x2), g


@njit(cache=True)
def seed_vg_point_out(x, g):
    """Single point, writes grad into preallocated g (2,), returns value."""
    x1 = x[0]
    x2 = x[1]
    g[0] = 1.0 / x1 + x2
    g[1] = x1 - math.cos(x2)
    return math.log(x1) + x1 * x2 - math.sin(x2)


@njit(cache=True, parallel=True)
def seed_value_batch(X, Y):
    """Forward only over points: X (n, 2) -> Y (n,) in place."""
    for i in prange(X.shape[0]):
        x1 = X[i, 0]
        x2 = X[i, 1]
        Y[i] = math.log(x1) + x1 * x2 - math.sin(x2)


@njit(cache=True, parallel=True)
def seed_vg_batch(X, Y, G):
    """Value and grad over points: X (n, 2) -> Y (n,), G (n, 2) in place."""
    for i in prange(X.shape[0]):
        x1 = X[i, 0]
        x2 = X[i, 1]
        Y[i] = math.log(x1) + x1 * x2 - math.sin(x2)
        G[i, 0] = 1.0 / x1 + x2
        G[i, 1] = x1 - math.cos(x2)


@njit(cache=True)
def seed_vg_batch_serial(X, Y, G):
    """Serial twin of ``seed_vg_batch`` (for checking parallel speed-up)."""
    for i in range(X.shape[0]):
        x1 = X[i, 0]
        x2 = X[i, 1]
        Y[i] = math.log(x1) + x1 * x2 - math.sin(x2)
        G[i, 0] = 1.0 / x1 + x2
        G[i, 1] = x1 - math.cos(x2)


# ---------------------------------------------------------------------------
# Hand-written Numba: rosen2
# ---------------------------------------------------------------------------


@njit(cache=True)
def rosen2_vg(x):
    """The natural user version: 1-D x (2,) -> (value, new grad array)."""
    x0 = x[0]
    x1 = x[1]
    t = x1 - x0 * x0
    g = np.empty(2)
    g[0] = -400.0 * x0 * t - 2.0 * (1.0 - x0)
    g[1] = 200.0 * t
    return 100.0 * t * t + (1.0 - x0) ** 2, g


@njit(cache=True)
def rosen2_vg_out(x, g):
    """``out=``-style: writes grad into preallocated g (2,), returns value."""
    x0 = x[0]
    x1 = x[1]
    t = x1 - x0 * x0
    g[0] = -400.0 * x0 * t - 2.0 * (1.0 - x0)
    g[1] = 200.0 * t
    return 100.0 * t * t + (1.0 - x0) ** 2


# ---------------------------------------------------------------------------
# Hand-written Numba: extended Rosenbrock
# ---------------------------------------------------------------------------


@njit(cache=True)
def rosen_ext_vg_out(x, g):
    n = x.shape[0]
    v = 0.0
    for i in range(n):
        g[i] = 0.0
    for i in range(n - 1):
        xi = x[i]
        t = x[i + 1] - xi * xi
        u = 1.0 - xi
        v += 100.0 * t * t + u * u
        g[i] += -400.0 * xi * t - 2.0 * u
        g[i + 1] += 200.0 * t
    return v


@njit(cache=True)
def rosen_ext_vg(x):
    g = np.empty_like(x)
    v = rosen_ext_vg_out(x, g)
    return v, g


# ---------------------------------------------------------------------------
# Hand-written Numba: sinfit
# ---------------------------------------------------------------------------


@njit(cache=True)
def sinfit_vg(w, x, y):
    """L(w) = mean((sin(w x_i) - y_i)^2) and dL/dw."""
    n = x.shape[0]
    v = 0.0
    g = 0.0
    for i in range(n):
        s = math.sin(w * x[i])
        r = s - y[i]
        v += r * r
        g += 2.0 * r * math.cos(w * x[i]) * x[i]
    return v / n, g / n


@njit(cache=True)
def sinfit_gd(w0, x, y, lr, steps):
    """Full hand-written gradient descent; returns (final w, final loss)."""
    w = w0
    v = 0.0
    for _ in range(steps):
        v, g = sinfit_vg(w, x, y)
        w = w - lr * g
    return w, v


def sinfit_gd_python(vg, w0=SINFIT_W0, lr=SINFIT_LR, steps=SINFIT_STEPS):
    """Reference Python-level GD loop around a scalar ``vg(w) -> (v, g)``."""
    w = w0
    v = None
    for _ in range(steps):
        v, g = vg(w)
        w = w - lr * g
    return w, v


# ---------------------------------------------------------------------------
# Warm-up / compile everything once
# ---------------------------------------------------------------------------


def compile_all():
    X = seed_points(4)
    Y = np.empty(4)
    G = np.empty((4, 2))
    seed_vg_point(X[0])
    seed_vg_point_out(X[0], np.empty(2))
    seed_value_batch(X, Y)
    seed_vg_batch(X, Y, G)
    seed_vg_batch_serial(X, Y, G)
    x = rosen2_point()
    rosen2_vg(x)
    rosen2_vg_out(x, np.empty(2))
    xe = rosen_ext_point(5)
    rosen_ext_vg(xe)
    rosen_ext_vg_out(xe, np.empty(5))
    xs, ys = sinfit_data()
    sinfit_vg(SINFIT_W0, xs, ys)
    sinfit_gd(SINFIT_W0, xs, ys, SINFIT_LR, 2)


# ---------------------------------------------------------------------------
# JAX peers.  Each make_* returns None when jax is not importable.
# Returned callables block until the result is ready.
# ---------------------------------------------------------------------------


def _jax():
    try:
        import jax
    except Exception:
        return None
    jax.config.update("jax_enable_x64", True)
    return jax


def _jax_seed(x):
    import jax.numpy as jnp

    return jnp.log(x[0]) + x[0] * x[1] - jnp.sin(x[1])


def _jax_rosen2(x):
    return 100.0 * (x[1] - x[0] ** 2) ** 2 + (1.0 - x[0]) ** 2


def _jax_rosen_ext(x):
    import jax.numpy as jnp

    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def _jax_sinfit(w, x, y):
    import jax.numpy as jnp

    return jnp.mean((jnp.sin(w * x) - y) ** 2)


def jax_put(a):
    """Place a numpy array on the default JAX device (None if no jax)."""
    jax = _jax()
    if jax is None:
        return None
    return jax.device_put(np.asarray(a))


def make_jax_seed_batch():
    """X (n, 2) -> (Y (n,), G (n, 2)) via jit(vmap(value_and_grad))."""
    jax = _jax()
    if jax is None:
        return None
    fn = jax.jit(jax.vmap(jax.value_and_grad(_jax_seed)))

    def run(X):
        return jax.block_until_ready(fn(X))

    return run


def make_jax_seed_forward_batch():
    jax = _jax()
    if jax is None:
        return None
    fn = jax.jit(jax.vmap(_jax_seed))

    def run(X):
        return jax.block_until_ready(fn(X))

    return run


def _make_jax_single(f):
    jax = _jax()
    if jax is None:
        return None
    fn = jax.jit(jax.value_and_grad(f))

    def run(*args):
        return jax.block_until_ready(fn(*args))

    return run


def make_jax_seed_point():
    return _make_jax_single(_jax_seed)


def make_jax_rosen2():
    return _make_jax_single(_jax_rosen2)


def make_jax_rosen_ext():
    return _make_jax_single(_jax_rosen_ext)


def make_jax_sinfit():
    """(w, x, y) -> (L, dL/dw)."""
    return _make_jax_single(_jax_sinfit)


def make_jax_sinfit_gd(x, y):
    """Python GD loop around jax.jit(value_and_grad); x, y placed on device once."""
    vg = make_jax_sinfit()
    if vg is None:
        return None
    xj = jax_put(x)
    yj = jax_put(y)

    def gd(w0=SINFIT_W0, lr=SINFIT_LR, steps=SINFIT_STEPS):
        w = w0
        v = None
        for _ in range(steps):
            v, g = vg(w, xj, yj)
            w = w - lr * float(g)
        return w, float(v)

    return gd


# ---------------------------------------------------------------------------
def lorenz_jax_f(p, steps=LORENZ_STEPS):
    """The Lorenz fit for JAX: its steps in ``lax.fori_loop`` (JAX's idiom: an unrolled
    Python loop of 2000 steps takes minutes to compile)."""
    jax = _jax()

    def body(_, s):
        return lorenz_step(s[0], s[1], s[2], p[0], p[1], p[2])

    x, y, z = jax.lax.fori_loop(0, steps, body, (1.0, 1.0, 1.0))
    return (x - 1.0) ** 2 + (y - 2.0) ** 2 + (z - 3.0) ** 2


def make_jax_lorenz():
    """jit(value_and_grad) of :func:`lorenz_jax_f`."""
    return _make_jax_single(lorenz_jax_f)


# CasADi peers (SX expression graphs + casadi.Function)
# ---------------------------------------------------------------------------


def _casadi():
    try:
        import casadi
    except Exception:
        return None
    return casadi


def make_casadi_rosen2():
    """casadi.Function x (2,) -> (value, grad) built from SX."""
    ca = _casadi()
    if ca is None:
        return None
    x = ca.SX.sym("x", 2)
    f = 100.0 * (x[1] - x[0] ** 2) ** 2 + (1.0 - x[0]) ** 2
    return ca.Function("rosen2_vg", [x], [f, ca.gradient(f, x)])


def make_casadi_rosen_ext(n):
    ca = _casadi()
    if ca is None:
        return None
    x = ca.SX.sym("x", n)
    f = ca.sum1(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)
    return ca.Function("rosen_ext_vg", [x], [f, ca.gradient(f, x)])


def make_casadi_lorenz(steps=LORENZ_STEPS):
    """casadi.Function p (3,) -> (value, gradient) of the unrolled Lorenz fit (SX)."""
    ca = _casadi()
    if ca is None:
        return None
    p = ca.SX.sym("p", 3)
    f = lorenz_f(p, steps)
    return ca.Function("lorenz_vg", [p], [f, ca.gradient(f, p)])


def casadi_chain(N, length=CHAIN_LENGTH):
    """CasADi's SX of :func:`hanging_chain`: ``(casadi, z, energy, links)``, or None."""
    ca = _casadi()
    if ca is None:
        return None
    z = ca.SX.sym("z", 2 * N + 2)
    x, y = z[: N + 1], z[N + 1 :]
    energy = ca.sum1(y[:-1] + y[1:]) / (2 * N)
    links = (x[1:] - x[:-1]) ** 2 + (y[1:] - y[:-1]) ** 2 - (length / N) ** 2
    return ca, z, energy, links


def make_casadi_chain_hessian(N):
    """casadi.Function (z, sigma, lam) -> the Hessian of sigma * energy + lam . links
    (sparse), or None."""
    sx = casadi_chain(N)
    if sx is None:
        return None
    ca, z, energy, links = sx
    sigma, lam = ca.SX.sym("sigma"), ca.SX.sym("lam", N)
    H, _ = ca.hessian(sigma * energy + ca.dot(lam, links), z)
    return ca.Function("chain_hessian", [z, sigma, lam], [H])


def make_casadi_chain_solver(N, tol, options=()):
    """CasADi's nlpsol with IPOPT for the hanging chain (``options``: IPOPT's), or None."""
    sx = casadi_chain(N)
    if sx is None:
        return None
    ca, z, energy, links = sx
    opts = {"print_time": False, "ipopt.print_level": 0, "ipopt.sb": "yes", "ipopt.tol": tol}
    opts.update({f"ipopt.{k}": v for k, v in dict(options).items()})
    return ca.nlpsol("chain", "ipopt", {"x": z, "f": energy, "g": links}, opts)


def make_casadi_seed():
    ca = _casadi()
    if ca is None:
        return None
    x = ca.SX.sym("x", 2)
    f = ca.log(x[0]) + x[0] * x[1] - ca.sin(x[1])
    return ca.Function("seed_vg", [x], [f, ca.gradient(f, x)])


def make_casadi_sinfit(n=SINFIT_N):
    """casadi.Function (w, x (n,), y (n,)) -> (L, dL/dw)."""
    ca = _casadi()
    if ca is None:
        return None
    w = ca.SX.sym("w")
    x = ca.SX.sym("x", n)
    y = ca.SX.sym("y", n)
    L = ca.sumsqr(ca.sin(w * x) - y) / n
    return ca.Function("sinfit_vg", [w, x, y], [L, ca.gradient(L, w)])


def make_casadi_sinfit_gd(x, y):
    """Python GD loop calling the casadi.Function; x, y converted to DM once."""
    ca = _casadi()
    if ca is None:
        return None
    F = make_casadi_sinfit(len(x))
    xd = ca.DM(x)
    yd = ca.DM(y)

    def gd(w0=SINFIT_W0, lr=SINFIT_LR, steps=SINFIT_STEPS):
        w = w0
        v = None
        for _ in range(steps):
            v, g = F(w, xd, yd)
            w = w - lr * float(g)
        return w, float(v)

    return gd


# ---------------------------------------------------------------------------
# autograd peers
# ---------------------------------------------------------------------------


def _autograd():
    try:
        import autograd
        import autograd.numpy as anp
    except Exception:
        return None, None
    return autograd, anp


def make_autograd_seed_batch():
    """X (n, 2) -> (Y, G) with one forward + one VJP (points independent)."""
    ag, anp = _autograd()
    if ag is None:
        return None
    from autograd import make_vjp

    def f(X):
        x1 = X[:, 0]
        x2 = X[:, 1]
        return anp.log(x1) + x1 * x2 - anp.sin(x2)

    mv = make_vjp(f)

    def run(X):
        vjp, Y = mv(X)
        return Y, vjp(np.ones(X.shape[0]))

    return run


def make_autograd_rosen2():
    ag, _ = _autograd()
    if ag is None:
        return None

    def f(x):
        return 100.0 * (x[1] - x[0] ** 2) ** 2 + (1.0 - x[0]) ** 2

    return ag.value_and_grad(f)


def make_autograd_rosen_ext():
    ag, anp = _autograd()
    if ag is None:
        return None

    def f(x):
        return anp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)

    return ag.value_and_grad(f)


def make_autograd_sinfit():
    """(w, x, y) -> (L, dL/dw)."""
    ag, anp = _autograd()
    if ag is None:
        return None

    def f(w, x, y):
        return anp.mean((anp.sin(w * x) - y) ** 2)

    return ag.value_and_grad(f)


def make_autograd_sinfit_gd(x, y):
    vg = make_autograd_sinfit()
    if vg is None:
        return None

    def gd(w0=SINFIT_W0, lr=SINFIT_LR, steps=SINFIT_STEPS):
        return sinfit_gd_python(lambda w: vg(w, x, y), w0, lr, steps)

    return gd
