#!/usr/bin/env python
"""tapejit at two commits, side by side, on the workloads of ``compare_peers.py``.

Usage::

    python asv_bench/compare_commits.py BASE [NEW] [--rounds 2] [--quick] [--out FILE.md]

``BASE`` and ``NEW`` are git revisions (``NEW`` defaults to the working tree). Each is
checked out into a temporary worktree, and ``compare_peers.py --no-peers`` (this tree's
script, so both are measured by the same code) runs against each tapejit in turn, in
alternating order for ``--rounds`` rounds (ABBA...), so slow drift of the machine falls on
both alike. Reported per workload: the best of the rounds' median times of each commit,
their ratio, and the ratio of the two commits' *interleaved* tapejit / hand-written Numba
ratios, which the hand-written code (the same in both runs) normalises against the
machine's state: the most robust of the three figures on a noisy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _checkout(rev: str, where: Path) -> Path:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(where),
                    rev], check=True, capture_output=True)
    return where


def _run(tree: Path, quick: bool, out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), TAPEJIT_QUIET="1")
    cmd = [sys.executable, str(HERE / "compare_peers.py"), "--no-peers", "--json", str(out)]
    if quick:
        cmd.append("--quick")
    subprocess.run(cmd, check=True, env=env, cwd=str(tree), stdout=subprocess.DEVNULL)
    data = json.loads(out.read_text())
    if not str(data["tapejit"]).startswith(str(tree)):
        raise RuntimeError(f"measured tapejit from {data['tapejit']}, not from {tree}")
    return data["rows"]


def _fmt(t: float | None) -> str:
    if t is None:
        return "n/a"
    for unit, f in (("s", 1.0), ("ms", 1e3), ("us", 1e6), ("ns", 1e9)):
        if t * f >= 1.0:
            return f"{t * f:.3g} {unit}"
    return f"{t * 1e9:.3g} ns"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("base", help="git revision of the baseline")
    ap.add_argument("new", nargs="?", help="git revision to compare (default: working tree)")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each commit (default 2)")
    ap.add_argument("--quick", action="store_true", help="compare_peers.py --quick")
    ap.add_argument("--out", metavar="FILE.md", help="also write the table here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tapejit-commits-") as tmp:
        tmp = Path(tmp)
        trees = {"base": _checkout(args.base, tmp / "base"),
                 "new": _checkout(args.new, tmp / "new") if args.new else ROOT}
        runs: dict[str, list[dict]] = {"base": [], "new": []}
        try:
            for r in range(args.rounds):
                order = ("base", "new") if r % 2 == 0 else ("new", "base")
                for key in order:
                    print(f"round {r + 1}: {key} ({trees[key]})", flush=True)
                    runs[key].append(_run(trees[key], args.quick, tmp / f"{key}{r}.json"))
        finally:
            for key in ("base", "new"):
                if args.new or key == "base":
                    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                                    str(trees[key])], capture_output=True)
    lines = [f"# tapejit {args.base} vs {args.new or 'working tree'}", "",
             f"`python asv_bench/compare_commits.py {' '.join(argv or sys.argv[1:])}`", "",
             "| workload | base | new | new / base | interleaved vs hand numba, new / base |",
             "|---|---|---|---|---|"]
    for name in runs["base"][0]:
        best = {}
        paired = {}
        for key in ("base", "new"):
            ts = [run.get(name, {}).get("cells", {}).get("tapejit") for run in runs[key]]
            ts = [t for t in ts if t is not None]
            best[key] = min(ts) if ts else None
            ps = [run.get(name, {}).get("paired") for run in runs[key]]
            ps = [p for p in ps if p is not None]
            paired[key] = min(ps) if ps else None
        ratio = (f"{best['new'] / best['base']:.3f}" if best["base"] and best["new"]
                 else "n/a")
        pratio = (f"{paired['new'] / paired['base']:.3f}" if paired["base"] and paired["new"]
                  else "n/a")
        lines.append(f"| {name} | {_fmt(best['base'])} | {_fmt(best['new'])} | {ratio} | "
                     f"{pratio} |")
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
