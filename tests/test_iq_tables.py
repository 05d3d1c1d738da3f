"""csrc/iq_tables.h is exactly what tools/gen_iq_tables.py makes from the installed gguf-py."""

import importlib.util
from pathlib import Path

from conftest import require

ROOT = Path(__file__).resolve().parents[1]


def test_header_is_what_the_script_generates():
    require("gguf")
    spec = importlib.util.spec_from_file_location("gen_iq_tables", ROOT / "tools" / "gen_iq_tables.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert (ROOT / "csrc" / "iq_tables.h").read_text() == gen.generate(), \
        "csrc/iq_tables.h is stale: run python tools/gen_iq_tables.py"
