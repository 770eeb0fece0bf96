"""Command line: ``tapejit demo``, ``tapejit inspect FILE``, ``tapejit eval FILE ...``,
``tapejit kernels [--op NAME --sweep SWEEP]``, ``tapejit compile [--jobs N]`` (also
``python -m tapejit ...``).

Every output is written to a temporary file and renamed into place when complete: on any
error the file that was at the path is untouched, and an output that is the same file as
an input is refused.

Exit codes: 0 success; 1 the output could not be written, or is an input (or Graphviz
is missing); 2 the tape file is unreadable, corrupt or from an incompatible tapejit (and
command-line usage errors); 3 the points or parameters are unreadable or do not fit the
tape (wrong shape, points outside the recorded branches).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import numpy as np

from ._atomic import check_distinct, replacing

EXIT_OK = 0
EXIT_OUTPUT = 1
EXIT_TAPE = 2
EXIT_POINTS = 3


def demo(n_points: int = 10**6, steps: int = 200, out_dir: str | None = None,
         pictures: bool = True) -> int:
    """Run the demo (see ``tapejit._demo``)."""
    from ._demo import run

    run(n_points=n_points, steps=steps, out_dir=out_dir, pictures=pictures)
    return EXIT_OK


def _op_names() -> list[str]:
    from ._ops import BY_NAME

    return list(BY_NAME)


def _sweep_names() -> list[str]:
    from ._kernels.codegen import SWEEPS

    return list(SWEEPS)


def _err(command: str, message: object) -> None:
    print(f"tapejit {command}: {message}", file=sys.stderr)


def _load(command: str, path: str):
    """The tape in ``path``, or ``None`` after printing why not."""
    from ._io import load_tape
    from ._validate import TapeFormatError

    try:
        return load_tape(path)  # limits from TAPEJIT_MAX_* (see _LIMITS_HELP)
    except TapeFormatError as exc:
        _err(command, exc)
        return None
    except ValueError as exc:  # a TAPEJIT_MAX_* variable that is not a number
        _err(command, exc)
        return None


_LIMITS_HELP = """\
limits on loading a tape file (inspect, eval), as for tapejit.load: a file that exceeds
one is refused (exit 2) before the bulk of it is read; for a trusted file, raise them with
  TAPEJIT_MAX_ELEMENTS      workspace floats per point (default 10**8)
  TAPEJIT_MAX_INSTRUCTIONS  instructions, and guards (default 10**7)
  TAPEJIT_MAX_CONSTS        constants (default 10**7)
e.g. TAPEJIT_MAX_ELEMENTS=1e9 tapejit inspect big.npz
"""


def _floats(text: str) -> np.ndarray:
    """``"1,2.5,-3"`` as a float array (``""`` is no values)."""
    parts = [t for t in text.replace(" ", "").split(",") if t]
    return np.array([float(t) for t in parts], dtype=np.float64)


def inspect(path: str, point: str | None = None, params: str | None = None, wrt: int = 0,
            limit: int = 50, dot: str | None = None) -> int:
    """Print a saved tape's summary, statistics and listing, and its table at a point."""
    from ._passes import format_stats, stats
    from ._show import render, table, to_dot

    tape = _load("inspect", path)
    if tape is None:
        return EXIT_TAPE
    lim = None if limit <= 0 else limit
    listing = tape.listing(limit=lim).split("\n")
    print(listing[0])  # repr
    print(format_stats(stats(tape)))
    print("\n".join(listing[1:]))
    x = p = None
    if point is not None:
        try:
            x = _floats(point)
            p = None if params is None else _floats(params)
            _check_cli_shapes(tape, x, p, "--table", "--params P1,P2,...")
            text = table(tape, x, p, wrt=wrt, limit=lim)
        except ValueError as exc:
            _err("inspect", f"bad point for --table: {exc}")
            return EXIT_POINTS
        print()
        print(text)
    if dot is not None:
        source = to_dot(tape, x, p)
        try:
            if os.path.splitext(dot)[1].lower() in (".dot", ".gv"):
                with replacing(dot) as (tmp,), open(tmp, "w", encoding="utf-8") as fh:
                    fh.write(source)
            else:
                render(source, dot)
        except (OSError, RuntimeError, ValueError) as exc:
            _err("inspect", f"cannot write {dot}: {exc}")
            return EXIT_OUTPUT
    return EXIT_OK


def _check_cli_shapes(tape: Any, x: np.ndarray, p: np.ndarray | None, x_flag: str,
                      p_flag: str) -> None:
    """The points' and parameters' shapes against the tape, in the CLI's terms (the
    tape's own messages name its Python arguments)."""
    n_in, n_par = tape.n_inputs, tape.n_params
    if np.ndim(x) not in (1, 2) or np.shape(x)[-1] != n_in:
        raise ValueError(f"{x_flag} must hold the tape's {n_in} input value(s) per point; "
                         f"got shape {np.shape(x)}")
    if p is None:
        if n_par:
            raise ValueError(f"this tape has {n_par} parameters: give them with {p_flag} "
                             f"(shape ({n_par},), or (n_points, {n_par}) for --points)")
        return
    if np.ndim(p) not in (1, 2) or np.shape(p)[-1] != n_par:
        raise ValueError(f"{p_flag.split()[0]} must hold the tape's {n_par} parameters "
                         f"(shape ({n_par},) or (n_points, {n_par})); got shape {np.shape(p)}")


def _load_array(what: str, path: str) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ValueError(f"cannot read {what} file {path!r}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(a, np.ndarray):
        a.close()
        raise ValueError(f"{what} file {path!r} is a .npz archive; expected one .npy array")
    if a.dtype.kind not in "iuf":
        raise ValueError(f"{what} in {path!r} must be real numbers; got dtype {a.dtype}")
    return a.astype(np.float64)


def evaluate(path: str, points: str, out: str, params: str | None = None,
             what: str = "forward", check: str = "raise") -> int:
    """Evaluate a saved tape at the points of a ``.npy`` file and save the result."""
    from ._errors import BranchError

    try:
        check_distinct({"--out": out}, {"the tape file": path, "--points": points,
                                        "--params": params})
    except ValueError as exc:
        _err("eval", exc)
        return EXIT_OUTPUT
    tape = _load("eval", path)
    if tape is None:
        return EXIT_TAPE
    try:
        X = _load_array("points", points)
        P = None if params is None else _load_array("params", params)
        if tape.n_inputs == 1 and X.ndim == 1 and X.shape[0] != 1:
            X = X[:, None]  # one input: a plain vector holds many points
        _check_cli_shapes(tape, X, P, "--points", "--params Q.npy")
        if what in ("grad", "hessian") and tape.n_outputs != 1:
            raise ValueError(
                f"--{what} needs a tape with one output; this tape has {tape.n_outputs} "
                "(use --jacobian)"
            )
        if what == "forward":
            res = tape.forward(X, P, check=check)
        elif what == "grad":
            res = tape.gradient(X, P, check=check)
        elif what == "jacobian":
            res = tape.jacobian(X, P, check=check)
        else:
            res = tape.hessian(X, P, check=check)
    except BranchError as exc:
        _err("eval", f"{exc.n_invalid} of {exc.n_points} point(s) left the branches recorded "
                     f"in the tape ({tape.n_guards} guard(s)): its values there would come "
                     "from the wrong branch, or a matrix instruction failed there. Pass --mask "
                     "to write NaN at those points (and evaluate the others).")
        return EXIT_POINTS
    except (ValueError, TypeError) as exc:
        _err("eval", exc)
        return EXIT_POINTS
    if check == "mask":
        res, valid = res
        bad = int(np.size(valid) - np.count_nonzero(valid))
        if bad:
            _err("eval", f"{bad} point(s) left the recorded branches: NaN there")
    result = np.asarray(res, dtype=np.float64)
    try:
        # exactly this name (np.save would append .npy), replaced only when complete
        with replacing(out) as (tmp,), open(tmp, "wb") as fh:
            np.save(fh, result)
    except OSError as exc:
        _err("eval", f"cannot write {out!r}: {exc}")
        return EXIT_OUTPUT
    print(f"wrote {out}: {what} {'x'.join(map(str, result.shape)) or 'scalar'}")
    return EXIT_OK


def kernels(op: str | None = None, sweep: str | None = None) -> int:
    """Print the sweeps and where each one's code comes from, or the code that one op
    runs in one sweep (see :func:`tapejit._kernels.codegen.kernel_code`)."""
    from ._kernels.codegen import kernel_code, sweep_origins

    if op is None:
        width = max(len(n) for n, _, _ in sweep_origins())
        print("sweeps (tapejit kernels --op NAME --sweep SWEEP prints one op's code):")
        for name, function, origin in sweep_origins():
            print(f"  {name:<{width}}  {function}: {origin}")
        print("drivers and helpers: tapejit/_kernels/{njit,scalar,libm,plan,support,point,"
              "batch}.py")
        return EXIT_OK
    print(kernel_code(op, sweep), end="")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tapejit`` command."""
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        # the module docstring, as plain text (no reStructuredText literals)
        prog="tapejit", description=__doc__.replace("``", ""), epilog=_LIMITS_HELP,
        formatter_class=raw,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="the seed examples: table, fit, 1e6 points, pictures")
    p_demo.add_argument("--points", type=int, default=10**6, help="points for the timing")
    p_demo.add_argument("--steps", type=int, default=200, help="gradient-descent steps")
    p_demo.add_argument("--out-dir", default=None, help="directory for the pictures")
    p_demo.add_argument("--no-pictures", action="store_true", help="skip the pictures")
    p_ins = sub.add_parser("inspect", help="summary, statistics and listing of a saved tape",
                           epilog=_LIMITS_HELP, formatter_class=raw)
    p_ins.add_argument("file", help="tape file written by Tape.save (tape.save(path) in "
                       "Python)")
    p_ins.add_argument("--table", metavar="X1,X2,...",
                       help="also print the Wengert table (values, tangents, adjoints) here")
    p_ins.add_argument("--params", metavar="P1,P2,...", help="parameters for --table")
    p_ins.add_argument("--wrt", type=int, default=0,
                       help="input of the tangent column of --table (default 0)")
    p_ins.add_argument("--limit", type=int, default=50,
                       help="instructions shown at most (default 50; 0: all)")
    p_ins.add_argument("--dot", metavar="PATH",
                       help="write the graph: .dot/.gv as text, .svg/.png/.pdf via Graphviz")
    p_ev = sub.add_parser("eval", help="evaluate a saved tape at the points of a .npy file",
                          epilog=_LIMITS_HELP, formatter_class=raw)
    p_ev.add_argument("file", help="tape file written by Tape.save")
    p_ev.add_argument("--points", required=True, metavar="P.npy",
                      help="points, shape (n_inputs,) or (n_points, n_inputs)")
    p_ev.add_argument("--params", metavar="Q.npy",
                      help="parameters, shape (n_params,) or (n_points, n_params)")
    mode = p_ev.add_mutually_exclusive_group()
    mode.add_argument("--grad", action="store_true", help="gradient (one-output tape)")
    mode.add_argument("--jacobian", action="store_true", help="Jacobian")
    mode.add_argument("--hessian", action="store_true", help="Hessian (one-output tape)")
    p_ev.add_argument("--mask", action="store_true",
                      help="NaN at points outside the recorded branches instead of failing")
    p_ev.add_argument("--out", required=True, metavar="O.npy", help="result file (.npy)")
    p_c = sub.add_parser("compile", help="compile every kernel for this machine, ahead of use "
                         "(into the on-disk cache; for a Dockerfile or CI step)")
    p_c.add_argument("--jobs", type=int, default=None,
                     help="processes compiling side by side (default: the CPUs, at most 4)")
    p_c.add_argument("--only", action="append", metavar="STEP",
                     help="compile only this step (repeatable), e.g. 'gradient, one point'")
    p_c.add_argument("--profile", metavar="FILE", nargs="?", const="-", default=None,
                     help="print (or write to FILE) each kernel function's compile time per "
                     "signature and step; for developers: use --jobs 1 and an empty "
                     "TAPEJIT_CACHE_DIR")
    p_c.add_argument("--background", action="store_true", help=argparse.SUPPRESS)
    p_k = sub.add_parser("kernels", help="the kernel sweeps, or the code one op runs in one")
    p_k.add_argument("--list", action="store_true", help="list the sweeps (the default)")
    p_k.add_argument("--op", choices=_op_names(), metavar="NAME",
                     help="an op of the table, e.g. mul (needs --sweep)")
    p_k.add_argument("--sweep", choices=_sweep_names(), metavar="SWEEP",
                     help="one of: " + ", ".join(_sweep_names()))
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.points < 1:
            parser.error("--points must be at least 1")
        return demo(args.points, args.steps, args.out_dir, not args.no_pictures)
    if args.command == "inspect":
        return inspect(args.file, args.table, args.params, args.wrt, args.limit, args.dot)
    if args.command == "eval":
        what = ("grad" if args.grad else "jacobian" if args.jacobian
                else "hessian" if args.hessian else "forward")
        return evaluate(args.file, args.points, args.out, args.params, what,
                        "mask" if args.mask else "raise")
    if args.command == "compile":
        if args.jobs is not None and args.jobs < 1:
            parser.error("--jobs must be at least 1")
        from ._warmup import compile_kernels, serve

        if args.background:  # the tiers' worker (tapejit/_kernels/tiers.py)
            serve()
        else:
            out = None
            try:
                if args.profile is not None:
                    out = sys.stdout if args.profile == "-" else open(
                        args.profile, "w", encoding="utf-8")
                compile_kernels(args.jobs, steps=args.only, profile=out)
            except ValueError as err:
                parser.error(str(err))
            finally:
                if out is not None and out is not sys.stdout:
                    out.close()
        return EXIT_OK
    if args.command == "kernels":
        if args.list or (args.op is None and args.sweep is None):
            return kernels()
        if args.op is None or args.sweep is None:
            parser.error("kernels: give both --op and --sweep (or --list)")
        return kernels(args.op, args.sweep)
    return 2  # pragma: no cover - argparse enforces the choices


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
