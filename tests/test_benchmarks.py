"""The asv benchmarks, each run once in this process: a smoke test that they still work.

``asv run --quick`` starts a new interpreter for every benchmark and every parameter set;
as CI's smoke test it took 514 to 665 s to show what one process shows in half a
minute. This module finds the benchmarks in ``asv_bench/benchmarks`` by asv's rules
(``asv_runner.discovery``): module-level functions, and methods of public non-abstract
classes, named ``time_``, ``timeraw_``, ``mem_``, ``peakmem_`` or ``track_`` (or
``TimeX``...); ``params``, ``setup``, ``teardown`` (any case), ``setup_cache``,
``skip_params`` and ``env`` looked up on the function, then the class, then the
module. Each benchmark and parameter combination is one test, named as asv names
it (``bench_core.SeedBatch.time_forward(1000)``), that runs the body once after the
setup. :func:`test_discovery_matches_asv` holds these rules to asv's own discovery where
asv is installed (the ``bench`` extra); ``.ci/run`` still runs ``asv check`` and one
benchmark through ``asv run``.

Where this differs from asv, and why:

* **One setup per class and parameter combination**, shared by the class's benchmarks
  (asv sets each up in a fresh process): their setups are most of the cost. A body
  already has to bear running again on the same state, as asv's repeats run it. The
  teardown runs after the last of them (or before another class's setup, under xdist).
* **Results are checked**: a ``track_`` result must be an int or float that
  ``json.dump`` writes (asv stores it so) and finite (asv reads NaN as "skipped"); a
  ``mem_`` result must be an object, not ``None``; a ``timeraw_`` benchmark's code runs
  in a fresh interpreter (on this checkout's ``tapejit``), as asv times it.
* **Skips fail unless the machine explains them.** asv skips a benchmark whose setup
  raises ``NotImplementedError`` (or whose body raises ``SkipNotImplemented``). The
  tapejit benchmarks turn any failure of their warm-up call into one, so that asv can
  run them on old commits that lack a feature; on this checkout that would hide a broken
  feature. :data:`ENVIRONMENT_SKIPS` lists the skips that are about this machine (an
  optional peer not installed, one Numba thread); any other fails.
* **Reduced sizes** (:data:`SMALLER`): module constants that size the work of the
  slowest benchmarks, not their code paths. **Not run** (:data:`EXCLUDED`, shown as
  skips with the reason): the two start-up benchmarks that compile kernels into an
  empty cache.

The tests are marked ``kernels``: they run on the optimised kernels, which CI compiles
with ``tapejit compile`` first. When the cache holds every step of ``tapejit compile``, a
benchmark that compiles a tapejit kernel fails: it would need a variant that ``tapejit
compile`` does not make. The hand-written Numba baselines (``_baselines.py``,
``_baselines_linalg.py``) compile their own functions on first use (``cache=True``, a
few seconds in all), and ``bench_compact.Chain.time_compact`` calls the slot compaction
(``tapejit._slot_reuse``, ``@njit`` code outside the kernels) directly, as
``tests/test_slot_reuse.py`` does.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import importlib.util
import inspect
import itertools
import json
import math
import os
import pkgutil
import re
import subprocess
import sys
import textwrap
import traceback
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import numba
import pytest
from numba.core import event as numba_event

pytestmark = pytest.mark.kernels

BENCH_DIR = Path(__file__).resolve().parents[1] / "asv_bench" / "benchmarks"
#: asv imports the suite as a top-level package named after its directory.
PACKAGE = BENCH_DIR.name

#: asv's kinds of benchmark and the names that make them, in ``asv_runner``'s order: the
#: first that matches wins.
KINDS = (
    ("mem", re.compile("^(Mem[A-Z_].+)|(mem_.+)$")),
    ("peakmem", re.compile("^(PeakMem[A-Z_].+)|(peakmem_.+)$")),
    ("time", re.compile("^(Time[A-Z_].+)|(time_.+)$")),
    ("timeraw", re.compile("^(Timeraw[A-Z_].+)|(timeraw_.+)$")),
    ("track", re.compile("^(Track[A-Z_].+)|(track_.+)$")),
)

#: Benchmarks not run here (``fnmatch`` patterns of asv names) and why. ``asv check`` in
#: ``.ci/run`` still imports them and checks their signatures.
EXCLUDED = {
    "bench_startup.CompileFromScratch.*": (
        "compiles the one-point interpreters into an empty cache in a child process "
        "(minutes on 2 cores)"),
    "bench_startup.ColdStart.*": (
        "a child process on an empty cache, whose background worker compiles kernels until "
        "it is stopped (its work thrown away): a core spent compiling"),
    "bench_startup.ColdStartLoop.*": (
        "as ColdStart, twice; the generic tier's loops without compiling are tested in "
        "tests/test_tiers.py"),
}

#: Module constants set smaller here (module -> name -> value): what they size is the work
#: of the slowest benchmarks (a minute of the smoke at full size), not their code paths.
SMALLER = {
    # DaskOverhead: 8 chunks of 50,000 points rather than of 1.25e6
    "bench_scale": {"DASK_POINTS": 400_000,
                    # Streamed: a file of 2 of evaluate_file's default blocks, not 12
                    "STREAM_POINTS": 1_000_000},
    # Chain: the 2000-step chains over 1e4 points, not 1e5 (numpy's takes 3 s at 1e5)
    "bench_compact": {"POINTS": 10_000},
}


def _no_jax() -> bool:
    return importlib.util.find_spec("jax") is None


def _one_numba_thread() -> bool:
    return numba.config.NUMBA_NUM_THREADS < 2


#: Skips that are about this machine, not about tapejit: (asv's skip message, the
#: condition that must hold here for it). Any other skip fails the test.
def _no_cyipopt() -> bool:
    return importlib.util.find_spec("cyipopt") is None


ENVIRONMENT_SKIPS = (
    (re.compile(r"^jax (not importable|unavailable)"), _no_jax),  # the `compare` extra
    (re.compile(r"^cyipopt unavailable"), _no_cyipopt),  # the `ipopt` extra
    (re.compile(r"^only \d+ threads here$"), _one_numba_thread),  # bench_scale.Threads
)


# ---------------------------------------------------------------------------
# discovery, by asv's rules
# ---------------------------------------------------------------------------


def _attr(source: Any, name: str, ignore_case: bool = False) -> Any:
    """``name`` of ``source`` or None (asv_runner's ``_get_attr``)."""
    if not ignore_case:
        return getattr(source, name, None)
    found = [getattr(source, key) for key in dir(source) if key.lower() == name.lower()]
    if len(found) > 1:
        raise ValueError(f"{source!r} has more than one {name!r} in different cases")
    return found[0] if found else None


def _all_attrs(sources: list, name: str, ignore_case: bool = False) -> list:
    return [v for v in (_attr(s, name, ignore_case) for s in sources) if v is not None]


def _first_attr(sources: list, name: str, default: Any = None) -> Any:
    found = _all_attrs(sources, name)
    return found[0] if found else default


def _param_ids(value: Any) -> str:
    """asv's display of a parameter value: its repr without a memory address."""
    text = repr(value)
    match = re.match(r"^(<.*) at (0x[\da-fA-F]*)(>)$", text)
    if match and match[2] in object.__repr__(value):
        text = match[1] + match[3]
    return text


@dataclasses.dataclass
class Benchmark:
    """One asv benchmark: a function, or a method of a class, and where it gets its
    attributes.

    Attributes
    ----------
    name : str
        asv's name: the module's path in the suite, the class, the function.
    kind : str
        One of :data:`KINDS`.
    module : module
    cls : type or None
        The class of a method; None for a module-level function.
    attr : str
        The name of the function or method.
    params : list of list
        asv's validated parameters: the values of each parameter.
    """

    name: str
    kind: str
    module: ModuleType
    cls: type | None
    attr: str
    params: list

    def sources(self, instance: Any = None) -> list:
        """Where asv looks up the benchmark's attributes, first to last: the function
        (bound to ``instance``), the instance, the module."""
        if self.cls is None:
            return [getattr(self.module, self.attr), self.module]
        return [getattr(instance, self.attr), instance, self.module]

    def combos(self) -> list[tuple]:
        return list(itertools.product(*self.params))

    def combo_ids(self) -> list[list[str]]:
        """asv's ids of each parameter's values, duplicates numbered."""
        ids = []
        for values in self.params:
            shown = [_param_ids(v) for v in values]
            counts = Counter(shown)
            seen: Counter = Counter()
            for j, text in enumerate(shown):
                if counts[text] > 1:
                    shown[j] = f"{text} ({seen[text]})"
                    seen[text] += 1
            ids.append(shown)
        return ids


def _validate_params(params: Any) -> list:
    """asv_runner's ``_validate_params`` (of the values): a flat list is one parameter."""
    params = list(params)
    if params and not isinstance(params[0], (tuple, list)):
        return [params]
    return [list(entry) for entry in params]


def _benchmark(attr: str, module: ModuleType, cls: type | None, func: Any) -> Benchmark | None:
    """The benchmark that ``func`` (``attr`` of ``cls`` or of ``module``) is, if any
    (asv_runner's ``_get_benchmark``)."""
    if getattr(func, "skip_benchmark", False):
        return None
    name = getattr(func, "benchmark_name", None)
    search = attr if name is None else name.split(".")[-1]
    kind = next((k for k, pattern in KINDS if pattern.match(search)), None)
    if kind is None:
        return None
    parts = module.__name__.split(".", 1)[1:]
    if cls is None:
        sources = [func, module]
        name = name or ".".join([*parts, func.__name__])
    else:
        instance = cls()  # asv looks the attributes up on an instance, as here
        sources = [getattr(instance, attr), instance, module]
        name = name or ".".join([*parts, cls.__name__, attr])
    params = _validate_params(_first_attr(sources, "params", []))
    return Benchmark(name, kind, module, cls, attr, params)


def _import_suite() -> tuple[list[ModuleType], dict[str, str]]:
    """Import the suite as asv does (package ``benchmarks`` and every module under it),
    without putting ``asv_bench`` on ``sys.path``.

    Returns
    -------
    modules : list of module
        The package and the modules that imported.
    errors : dict
        The traceback of each module that did not import, by module name.
    """
    package = sys.modules.get(PACKAGE)
    if package is None:
        spec = importlib.util.spec_from_file_location(
            PACKAGE, BENCH_DIR / "__init__.py", submodule_search_locations=[str(BENCH_DIR)])
        package = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = package
        spec.loader.exec_module(package)
    elif Path(package.__file__).resolve() != BENCH_DIR / "__init__.py":
        raise ImportError(f"another module is imported as {PACKAGE!r}: {package.__file__}")
    modules, errors = [package], {}
    for info in pkgutil.walk_packages(package.__path__, f"{PACKAGE}.", onerror=lambda _: None):
        try:
            modules.append(importlib.import_module(info.name))
        except Exception:
            errors[info.name] = traceback.format_exc()
    return modules, errors


def _discover(modules: list[ModuleType]) -> list[Benchmark]:
    """Every benchmark of ``modules``, in asv's order (asv_runner's ``disc_benchmarks``)."""
    found = []
    for module in modules:
        for attr, obj in list(module.__dict__.items()):
            if attr.startswith("_"):
                continue
            if inspect.isclass(obj) and not inspect.isabstract(obj):
                for name, member in inspect.getmembers(obj):
                    if inspect.isfunction(member) or inspect.ismethod(member):
                        found.append(_benchmark(name, module, obj, member))
            elif inspect.isfunction(obj):
                found.append(_benchmark(attr, module, None, obj))
    return [b for b in found if b is not None]


def _shrink(modules: list[ModuleType]) -> list[str]:
    """Apply :data:`SMALLER`; what could not be applied (a renamed constant)."""
    by_name = {m.__name__.split(".", 1)[-1]: m for m in modules}
    problems = []
    for mod_name, values in SMALLER.items():
        module = by_name.get(mod_name)
        for const, value in values.items():
            if module is None or not isinstance(getattr(module, const, None), int):
                problems.append(f"{mod_name}.{const} is not an int constant of the suite")
            else:
                setattr(module, const, value)
    return problems


def _excluded(name: str) -> str | None:
    return next((why for pattern, why in EXCLUDED.items() if fnmatch.fnmatchcase(name, pattern)),
                None)


@dataclasses.dataclass
class Case:
    """One test: a benchmark at one parameter combination.

    Attributes
    ----------
    bench : Benchmark
    combo : tuple
        The parameter values.
    id : str
        The test id: asv's name and parameters.
    group : tuple
        What shares one setup: the module, the class and the parameter values (the
        function too when it carries its own setup or parameters).
    last : bool
        Whether this is the last case of its group in collection order (its teardown runs
        after it).
    """

    bench: Benchmark
    combo: tuple
    id: str
    group: tuple
    last: bool = False


_OWN_ATTRS = ("setup", "teardown", "setup_cache", "params", "skip_params")


def _cases(benches: list[Benchmark]) -> list[Case]:
    """The tests, each group's together (asv's order otherwise)."""
    groups: dict[tuple, list[Case]] = {}
    for b in benches:
        func = getattr(b.cls or b.module, b.attr)
        own = b.cls is None or any(_attr(func, a, a in ("setup", "teardown")) is not None
                                   for a in _OWN_ATTRS)
        for combo, ids in zip(b.combos(), itertools.product(*b.combo_ids()), strict=True):
            group = (b.module.__name__, b.cls.__name__ if b.cls else None, ids,
                     b.attr if own else None)
            shown = f"{b.name}({', '.join(ids)})" if b.params else b.name
            groups.setdefault(group, []).append(Case(b, combo, shown, group))
    cases = []
    for members in groups.values():
        cases += [*members[:-1], dataclasses.replace(members[-1], last=True)]
    return cases


MODULES, IMPORT_ERRORS = _import_suite()
SHRINK_PROBLEMS = _shrink(MODULES)
BENCHMARKS = _discover(MODULES)
CASES = _cases(BENCHMARKS)


# ---------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------


class _Skip(Exception):
    """asv would skip the benchmark (the message says why)."""


class _Compiles(numba_event.Listener):
    """The Numba functions compiled (not loaded from the cache) while listening: their
    names and source files."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def on_start(self, event) -> None:
        fn = getattr(event.data["dispatcher"], "py_func", None)
        code = getattr(fn, "__code__", None)
        self.seen.append((f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}",
                          getattr(code, "co_filename", "")))

    def on_end(self, event) -> None:
        pass


class _SetUp:
    """The set-up instance of one group, kept for its other benchmarks."""

    def __init__(self, case: Case, instance: Any, args: tuple) -> None:
        self.case, self.instance, self.args = case, instance, args

    def teardown(self) -> None:
        sources = self.case.bench.sources(self.instance)
        for teardown in _all_attrs(sources, "teardown", ignore_case=True):
            teardown(*self.args)


_ACTIVE: list[_SetUp] = []  # at most one: the group whose benchmarks run now
_CACHES: dict[Any, Any] = {}  # setup_cache results, by function


def _leave() -> None:
    """Tear the active group down."""
    if _ACTIVE:
        done = _ACTIVE.pop()
        try:
            done.teardown()
        except Exception as exc:
            raise RuntimeError(f"the teardown of {done.case.id} (set up for its class's "
                               f"benchmarks) raised {exc!r}") from exc


def _takes_no_arguments(setup: Any) -> bool:
    """A module-level setup callable with no arguments (asv runs those before
    ``setup_cache``; a method waits for the instance's setup)."""
    if inspect.ismethod(setup):
        return False
    try:
        inspect.signature(setup).bind()
    except TypeError:
        return False
    return True


def _setup_cache(sources: list, scratch: Path) -> Any:
    """The value of the benchmark's ``setup_cache`` (None without one), computed once
    in a directory of its own, as asv does, after the parameterless module setups."""
    setup_cache = _first_attr(sources, "setup_cache")
    if setup_cache is None:
        return None
    key = getattr(setup_cache, "__func__", setup_cache)
    if key not in _CACHES:
        here = os.getcwd()
        where = scratch / f"setup_cache-{len(_CACHES)}"
        where.mkdir()
        os.chdir(where)
        try:
            for setup in _all_attrs(sources, "setup", ignore_case=True)[::-1]:
                if _takes_no_arguments(setup):
                    setup()
            _CACHES[key] = setup_cache()
        finally:
            os.chdir(here)
    return _CACHES[key]


def _enter(case: Case, scratch: Path) -> _SetUp:
    """The set-up instance of ``case``'s group: kept from an earlier case of the group, or
    set up now (the previous group torn down first).

    Raises
    ------
    _Skip
        If asv would skip the benchmark: its parameters are in ``skip_params`` or a setup
        raised ``NotImplementedError`` (the teardowns then run, as asv runs them).
    """
    if _ACTIVE and _ACTIVE[0].case.group == case.group:
        return _ACTIVE[0]
    _leave()
    bench = case.bench
    instance = bench.cls() if bench.cls else None
    sources = bench.sources(instance)
    if case.combo in [tuple(t) for t in _first_attr(sources, "skip_params", [])]:
        raise _Skip("in skip_params")
    cache = _setup_cache(sources, scratch)
    args = case.combo if cache is None else (cache, *case.combo)
    state = _SetUp(case, instance, args)
    try:
        for setup in _all_attrs(sources, "setup", ignore_case=True)[::-1]:
            setup(*args)
    except NotImplementedError as exc:
        state.teardown()
        raise _Skip(str(exc)) from exc
    _ACTIVE.append(state)
    return state


def _is_skip(exc: BaseException) -> bool:
    """asv's ``SkipNotImplemented`` raised by a body (a skip, by class name: asv need not
    be installed)."""
    return any(k.__name__ == "SkipNotImplemented" for k in type(exc).__mro__)


def _run_timeraw(code: Any, env: dict | None) -> None:
    """Run a ``timeraw_`` benchmark's code once in a fresh interpreter, as asv's timer
    does, on the ``tapejit`` this process imported."""
    import tapejit

    stmt, setup = code if isinstance(code, tuple) else (code, "")
    program = (f"from timeit import timeit\n"
               f"timeit(stmt={textwrap.dedent(stmt)!r}, setup={textwrap.dedent(setup)!r}, "
               f"number=1)\n")
    root = str(Path(tapejit.__file__).resolve().parents[1])
    child = dict(os.environ, **(env or {}))
    child["PYTHONPATH"] = os.pathsep.join(p for p in (root, child.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-c", program], env=child, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"the timed code failed in a fresh interpreter:\n{proc.stderr}"


def _check_result(case: Case, result: Any) -> None:
    """What asv needs of a benchmark's return value."""
    if case.bench.kind == "track":
        assert isinstance(result, (int, float)) and not isinstance(result, bool), (
            f"track_ result {result!r} ({type(result).__name__}) is not an int or float")
        json.dumps(result)  # what asv does with it; a numpy integer raises here
        assert math.isfinite(result), f"track_ result {result!r} (asv reads NaN as a skip)"
    elif case.bench.kind == "mem":
        assert result is not None, "mem_ benchmark returned None: asv measures the result"


def _skip_or_fail(case: Case, reason: str) -> None:
    for pattern, holds in ENVIRONMENT_SKIPS:
        if pattern.search(reason) and holds():
            pytest.skip(f"asv skips it here: {reason}")
    pytest.fail(f"asv would skip {case.id} ({reason}); nothing on this machine explains "
                f"that (ENVIRONMENT_SKIPS), so it hides a failure", pytrace=False)


def _complete_kernel_cache() -> Path | None:
    """The directory of the generated kernel modules if the cache holds every step of
    ``tapejit compile`` (each step's marker is there), else None."""
    from tapejit._kernels.runtime import kernels
    from tapejit._kernels.tiers import marker
    from tapejit._warmup import STEPS

    module = kernels().module
    if all(marker(module, step.name).exists() for step in STEPS):
        return Path(module.__file__).resolve().parents[1]
    return None


@pytest.fixture(scope="module")
def suite_env(tmp_path_factory):
    """A scratch working directory (asv runs benchmarks in a temporary one), Numba's
    compilations listened to, the kernel cache's directory if it is complete; the last
    group torn down at the end."""
    scratch = tmp_path_factory.mktemp("asv-smoke")
    here = os.getcwd()
    os.chdir(scratch)
    compiles = _Compiles()
    numba_event.register("numba:compile", compiles)
    try:
        yield scratch, compiles, _complete_kernel_cache()
    finally:
        numba_event.unregister("numba:compile", compiles)
        os.chdir(here)
        _leave()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_benchmark(case: Case, suite_env):
    """Set up (or reuse the group's set-up instance), run the body once, check what it
    returns; the last benchmark of its group tears it down."""
    scratch, compiles, kernel_cache = suite_env
    reason = _excluded(case.bench.name)
    if reason:
        _leave()  # nothing of this group is set up; release the previous one
        pytest.skip(f"not run in the smoke: {reason}")
    start = len(compiles.seen)
    try:
        try:
            state = _enter(case, scratch)
        except _Skip as skip:
            _skip_or_fail(case, str(skip))
        func = case.bench.sources(state.instance)[0]
        try:
            result = func(*state.args)
        except Exception as exc:
            if not _is_skip(exc):
                raise
            _skip_or_fail(case, str(exc))
        if case.bench.kind == "timeraw":
            _run_timeraw(result, _first_attr(case.bench.sources(state.instance), "env"))
        _check_result(case, result)
    finally:
        if case.last:
            _leave()
    # Only the generated kernels: the markers say nothing of tapejit's own @njit helpers
    # (slot compaction), cached beside their source unless NUMBA_CACHE_DIR is set.
    kernels = [name for name, file in compiles.seen[start:]
               if kernel_cache and Path(file).resolve().is_relative_to(kernel_cache)]
    assert not kernels, f"compiled kernels that `tapejit compile` does not make: {kernels}"


def test_suite_imports():
    """Every module of the suite imports (one that does not has no tests above)."""
    assert not IMPORT_ERRORS, "\n".join(f"{m} does not import:\n{tb}"
                                         for m, tb in IMPORT_ERRORS.items())
    assert BENCHMARKS, f"no benchmarks found in {BENCH_DIR}"


def test_reductions_apply():
    """Every :data:`SMALLER` constant and :data:`EXCLUDED` pattern names something in
    the suite (a renamed one would silently stop applying)."""
    assert not SHRINK_PROBLEMS
    names = [b.name for b in BENCHMARKS]
    unused = [p for p in EXCLUDED if not fnmatch.filter(names, p)]
    assert not unused, f"EXCLUDED patterns that match no benchmark: {unused}"


def test_discovery_matches_asv():
    """The benchmarks and parameters found here are asv's own (``asv_runner``)."""
    discovery = pytest.importorskip("asv_runner.discovery",
                                    reason="asv is not installed (the `bench` extra)")
    theirs = {b.name: b.params for b in discovery.disc_benchmarks(str(BENCH_DIR))}
    ours = {b.name: b.combo_ids() for b in BENCHMARKS}
    assert ours == theirs
