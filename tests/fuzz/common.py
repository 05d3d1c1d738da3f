"""Shared plumbing of realm's atheris fuzz targets (tests/fuzz/fuzz_*.py).

Each target is a script: `python tests/fuzz/fuzz_<name>.py [libFuzzer flags] [corpus dirs]`,
e.g. `-max_total_time=600 -artifact_prefix=/tmp/findings/ corpus/`.  tests/test_fuzz.py runs
each for a few seconds on seeds from `seeds.py`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
GUEST = ROOT / "guest"

for _p in (str(TESTS), str(Path(__file__).resolve().parent)):
    if _p not in sys.path:
        sys.path.insert(0, _p)


class Finding(AssertionError):
    """A broken contract: atheris reports it as a crash and saves the input."""


def abi_codes() -> dict[str, int]:
    """REALM_E_* codes from guest/realm_abi.h (so a target need not import realm)."""
    text = (GUEST / "realm_abi.h").read_text()
    return {m[1]: int(m[2]) for m in re.finditer(r"#define REALM_E_(\w+) \((-\d+)\)", text)}


def libfuzzer_flag(argv: list[str], name: str) -> str | None:
    """The value of -name=value in argv (the last one), or None."""
    value = None
    for arg in argv:
        if arg.startswith(f"-{name}="):
            value = arg.split("=", 1)[1]
    return value
