"""The SIMD dequantizers and dot kernels of every architecture against the scalar reference, in C.

tests/c/simd_vs_scalar.c is built natively with the system compiler, and for
aarch64 with zig (PyPI's ziglang) and run under qemu-aarch64 (Debian's qemu-user),
so the NEON kernels are checked on x86 machines too."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the dequantizers and the table of formats (csrc/traits.c), with the dot kernels it names
# and the matrix products: the activations' quantizer and every dot kernel
KERNELS = [*sorted((ROOT / "csrc").glob("dequant*.c")), *(ROOT / "csrc" / f for f in ("traits.c", "q8.c", "matmul.c")),
           *sorted((ROOT / "csrc").glob("matmul_*.c"))]
SOURCES = [str(ROOT / "tests/c/simd_vs_scalar.c"), *map(str, KERNELS)]
# built without OpenMP: its pragmas are ignored, and the thread counts they would take go unused
FLAGS = ["-O2", "-std=c11", "-ffp-contract=off", f"-I{ROOT / 'csrc'}", "-Wall", "-Werror", "-Wno-unused-function", "-Wno-unknown-pragmas",
         "-Wno-unused-variable", "-Wno-unused-but-set-variable"]


def run_harness(cmd: list[str], exe: Path, runner: list[str]) -> str:
    subprocess.run([*cmd, *FLAGS, *SOURCES, "-o", str(exe), "-lm"], check=True, capture_output=True, text=True)
    result = subprocess.run([*runner, str(exe)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_native_simd_matches_scalar(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    out = run_harness([cc], tmp_path / "native", [])
    assert "DIFFERS" not in out
    import realm

    assert out.count(" matmul same") == len(realm.FORWARD_TYPES), out


def test_neon_matches_scalar_under_qemu(tmp_path):
    qemu = shutil.which("qemu-aarch64")
    if qemu is None:
        pytest.skip("qemu-aarch64 (Debian's qemu-user) is not installed")
    pytest.importorskip("ziglang")
    out = run_harness([sys.executable, "-m", "ziglang", "cc", "-target", "aarch64-linux-musl"],
                      tmp_path / "arm64", [qemu])
    assert "best isa: neon" in out
    import realm

    assert out.count(" ok") == len(realm.SUPPORTED_TYPES), out
    assert out.count(" matmul same") == len(realm.FORWARD_TYPES), out
