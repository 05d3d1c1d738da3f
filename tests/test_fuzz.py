"""Time-bounded atheris fuzz runs of the GGUF reader, the guest's GGUF header parser (native,
under AddressSanitizer) and the host's realm_* imports (targets in tests/fuzz/).

The three targets run at the same time, each in a child process for REALM_FUZZ_SECONDS
(default 25 s under CI=true, 5 s otherwise), on seeds generated into a temporary folder; any
crash, sanitizer report, broken contract, leak or per-input timeout (60 s) fails the target's
test with the fuzzer's last lines and the saved input.  Longer runs: see tests/fuzz/README.md.
What they found is fixed and kept as regression tests where it belongs (test_corrupt_gguf.py).
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import IN_CI, require

FUZZ = Path(__file__).resolve().parent / "fuzz"
TARGETS = ["guest_parser", "reader", "imports"]  # the parser first: its build takes a few seconds


def fuzz_seconds() -> int:
    value = os.environ.get("REALM_FUZZ_SECONDS")
    return max(1, int(float(value))) if value else (25 if IN_CI else 5)


def _tail(text: str, lines: int = 60) -> str:
    kept = [line for line in text.splitlines()
            if not re.match(r"#\d+\s+(NEW|REDUCE)\s|INFO: Instrumenting ", line)]
    return "\n".join(kept[-lines:])


class Run:
    """One target's fuzzer, started in a child process."""

    def __init__(self, target: str, folder: Path, seconds: int):
        self.target, self.seconds = target, seconds
        self.corpus, self.artifacts, self.log = folder / "corpus", folder / "artifacts", folder / "fuzzer.log"
        self.artifacts.mkdir(parents=True)
        self.cmd = [sys.executable, str(FUZZ / f"fuzz_{target}.py"), f"-max_total_time={seconds}",
                    "-rss_limit_mb=2048", "-timeout=60", f"-artifact_prefix={self.artifacts}/",
                    "-print_final_stats=1", str(self.corpus)]
        self.error: str | None = None
        seeds = subprocess.run([sys.executable, str(FUZZ / "seeds.py"), target, str(self.corpus)],
                               capture_output=True, text=True, timeout=600)
        if seeds.returncode != 0:
            self.error = f"seeds.py {target} failed:\n{seeds.stderr[-4000:]}"
            return
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder)

    def wait(self) -> tuple[int | str, str]:
        """(exit status or "timeout", the fuzzer's output).  Builds (the native parser: seconds of
        zig cc) and start-up come on top of the fuzzing time."""
        try:
            rc: int | str = self.proc.wait(timeout=self.seconds + 300)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            rc = "timeout"
        return rc, self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every target's fuzzer, run at the same time (they share the machine's cores)."""
    require("atheris")
    seconds = fuzz_seconds()
    have_gguf = True
    try:
        import gguf  # noqa: F401  (write_tiny_llama: a reader seed, the imports' shared model)
    except ImportError:
        have_gguf = False
    started = {t: Run(t, tmp_path_factory.mktemp(f"fuzz-{t}"), seconds)
               for t in TARGETS if have_gguf or t == "guest_parser"}
    yield started
    for run in started.values():
        if run.error is None and run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz(target, runs):
    if target not in runs:
        require("gguf")
    run = runs[target]
    assert run.error is None, run.error
    rc, output = run.wait()
    found = sorted(p for p in run.artifacts.iterdir() if re.match(r"(crash|leak|timeout|oom|slow-unit)-", p.name))
    report = [f"$ {' '.join(run.cmd)}\nexit status {rc}\n--- the fuzzer's last lines ---\n{_tail(output)}"]
    for p in found[:3]:
        data = p.read_bytes()
        report.append(f"--- {p.name} ({len(data)} bytes, base64); rerun: python {FUZZ / f'fuzz_{target}.py'} FILE ---\n"
                      f"{base64.b64encode(data[:4096]).decode()}")
    assert rc == 0 and not found, "\n".join(report)
    done = re.search(r"Done (\d+) runs", output)
    assert done and int(done[1]) > 0, "\n".join(report)
    if target == "guest_parser":
        variant = re.search(r"variant (\S+); C coverage: ([^,]+), (\d+) counters", output)
        assert variant and int(variant[3]) > 0, "the C code's coverage did not reach libFuzzer\n" + "\n".join(report)
        if IN_CI:
            assert variant[1].endswith("-asan"), f"CI must run the parser under AddressSanitizer, ran {variant[1]}"
    print(f"{target}: {done[1]} runs in {run.seconds} s")
