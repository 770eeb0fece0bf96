"""Fuzz suite of issue #17 (harness and case generators: ``tests/_fuzz.py``).

Each family runs in child processes with a 3 GiB address-space limit and a time limit per
case; a child that dies or overruns is recorded against the case it was running and a
new one continues with the next case. Every case must end as the documented exception
(``rejected``) or as accepted with right results (``loaded``): never a crash, a hang, a
MemoryError, a wrong result, a changed input or previous file, an overwritten canary or
an undocumented exception.

``TAPEJIT_FUZZ_CASES=N`` (cases of the ``files`` family; the others scale with it) and
``TAPEJIT_FUZZ_SEED`` make longer or other runs; a failing case is replayed alone with
``python tests/_fuzz.py --replay FAMILY:INDEX --seed SEED``.
"""

from __future__ import annotations

import os

import pytest
from _fuzz import DEFAULT_SEED, FAMILIES, case_counts, format_table, run_family

SEED = int(os.environ.get("TAPEJIT_FUZZ_SEED", DEFAULT_SEED))

# Outcomes each family must produce at least once, so that a generator that degenerated
# (every file refused for the same reason, every call refused) does not pass unnoticed.
MUST_SEE = {
    "files": ("rejected", "loaded"),
    "cli": ("rejected", "loaded"),
    "paths": ("rejected", "loaded"),
    "sigkill": (),  # killed early or late: either is right
    "bundles": ("rejected", "loaded"),
}


# The bundles' cases call the tape from a compiled @njit caller: it needs the optimised
# kernels (compiled in process where they are not cached), so it runs with their tests.
_KERNEL_FAMILIES = {"bundles"}


@pytest.mark.parametrize("family", [
    pytest.param(f, marks=pytest.mark.kernels) if f in _KERNEL_FAMILIES else f
    for f in FAMILIES])
def test_fuzz_family(family, tmp_path, record_property):
    n = case_counts()[family]
    run = run_family(family, SEED, n, tmp_path)
    table = format_table([run])
    record_property("fuzz_counts", table)
    replay = f"replay one with: python tests/_fuzz.py --replay {family}:INDEX --seed {SEED}"
    if run.setup_error or sorted(run.records) != list(range(n)):
        pytest.fail(f"cases without an outcome\n{table}", pytrace=False)
    if failures := run.failures():
        pytest.fail(f"{len(failures)} of {n} cases failed ({replay})\n{table}", pytrace=False)
    counts = run.counts()
    missing = [o for o in MUST_SEE[family] if not counts[o]]
    assert not missing, f"no case ended {missing}: the generator degenerated\n{table}"
    print(table)  # shown with -rP or -s


def test_harness_records_crash_hang_and_memory_and_goes_on(tmp_path):
    run = run_family("selfcheck", SEED, 5, tmp_path, case_timeout=3)
    outcomes = [run.records[i]["outcome"] for i in range(5)]
    assert outcomes == ["loaded", "crash", "hang", "memory", "loaded"], format_table([run])
    assert "SIGSEGV" in run.records[1]["detail"]
    assert run.children == 3  # restarted after the crash and after the hang
