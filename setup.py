"""Build of realm's C/Cython extension and of the WebAssembly guest (realm/guest.wasm)."""

import glob
import importlib.util
import os
import subprocess
import sys
import tempfile

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

# -ffp-contract=off: the kernels must round every product and sum separately,
# as llama.cpp's reference code does; a fused multiply-add would change bits.
C_FLAGS = ["-O3", "-ffp-contract=off", "-fno-strict-aliasing", "-Wall", "-Wno-unused-function"]
EXTRA_C_FLAGS = os.environ.get("REALM_CFLAGS", "").split()  # e.g. -fsanitize=address,undefined


# The guest: every guest/*.c, compiled by zig's clang (PyPI's ziglang) for wasm32-wasi as a
# reactor (a library, no main), linked with wasi-libc's allocator only: the module must import
# nothing but realm_* functions (tests/test_abi_header.py checks).  A small stack: the guest
# keeps its data on the heap.  -msimd128: wasm SIMD (the greedy argmax over the vocabulary; float
# arithmetic keeps its order without -ffast-math).
HERE = os.path.dirname(os.path.abspath(__file__))
GUEST_FLAGS = ["-target", "wasm32-wasi", "-mexec-model=reactor", "-O2", "-msimd128", "-s", "-std=c11",
               "-Wall", "-Wextra", "-Wl,-z,stack-size=262144"]


def build_guest(out_path):
    """Compile guest/*.c to out_path (skipped when it is newer than every guest source)."""
    sources = sorted(glob.glob(os.path.join(HERE, "guest", "*.c")))
    if not sources:
        sys.exit("realm: guest/*.c is missing (an sdist needs them: see MANIFEST.in)")
    inputs = sources + glob.glob(os.path.join(HERE, "guest", "*.h"))
    if os.path.exists(out_path) and os.path.getmtime(out_path) >= max(map(os.path.getmtime, inputs)):
        return
    if importlib.util.find_spec("ziglang") is None:
        sys.exit("realm: building guest.wasm needs the 'ziglang' package (pip install ziglang)")
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    tmp = f"{out_path}.{os.getpid()}.tmp"  # parallel builds must not see a half-written module
    cmd = [sys.executable, "-m", "ziglang", "cc", *GUEST_FLAGS, "-I", os.path.join(HERE, "guest"),
           *sources, "-o", tmp]
    print("realm: building", out_path, file=sys.stderr)
    subprocess.run(cmd, check=True)
    os.replace(tmp, out_path)


class BuildPy(build_py):
    """Puts guest.wasm in the built package (in the source tree for editable installs)."""

    def run(self):
        super().run()
        package_dir = os.path.join(HERE, "realm") if getattr(self, "editable_mode", False) \
            else os.path.join(self.build_lib, "realm")
        build_guest(os.path.join(package_dir, "guest.wasm"))

    def get_outputs(self, *args, **kwargs):
        return [*super().get_outputs(*args, **kwargs), os.path.join(self.build_lib, "realm", "guest.wasm")]


class BuildExt(build_ext):
    """Adds OpenMP where the compiler has it; without it the kernels run on one thread.
    `build_ext --inplace` also builds realm/guest.wasm, so a checkout has everything."""

    def run(self):
        super().run()
        if self.inplace:
            build_guest(os.path.join(HERE, "realm", "guest.wasm"))

    def build_extensions(self):
        openmp = self._has_flag("-fopenmp")
        if not openmp:
            print("realm: the compiler has no OpenMP; kernels will be single-threaded", file=sys.stderr)
        for ext in self.extensions:
            ext.extra_compile_args = C_FLAGS + (["-fopenmp"] if openmp else []) + EXTRA_C_FLAGS
            ext.extra_link_args = (["-fopenmp"] if openmp else []) + EXTRA_C_FLAGS
        super().build_extensions()

    def _has_flag(self, flag):
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "probe.c")
            with open(src, "w") as f:
                f.write("#include <omp.h>\nint main(void) { return omp_get_num_procs() < 1; }\n")
            try:
                objs = self.compiler.compile([src], output_dir=tmp, extra_postargs=[flag])
                self.compiler.link_executable(objs, os.path.join(tmp, "probe"), extra_postargs=[flag])
            except Exception:
                return False
        return True


# One extension, realm._native: every kernel compiled once, so a process holds one table of
# formats (csrc/traits.c) and one cached choice of instruction set.
NATIVE_SOURCES = [
    "realm/_native.pyx",  # includes realm/_quant.pxi, _compute.pxi, _forward.pxi, _ticker.pxi, _signals.pxi, _imports.pxi
    "csrc/traits.c",
    "csrc/dequant.c",
    "csrc/dequant_ref.c",
    "csrc/dequant_avx2.c",
    "csrc/dequant_neon.c",
    "csrc/dequant_iq_ref.c",
    "csrc/dequant_iq_avx2.c",
    "csrc/dequant_iq_neon.c",
    "csrc/q8.c",
    "csrc/matmul.c",
    "csrc/matmul_ref.c",
    "csrc/matmul_avx2.c",
    "csrc/matmul_avx512.c",
    "csrc/matmul_neon.c",
    "csrc/matmul_k_vnni.c",
    "csrc/matmul_iq_ref.c",
    "csrc/matmul_iq_avx2.c",
    "csrc/matmul_iq2_ref.c",
    "csrc/matmul_iq2_avx2.c",
    "csrc/matmul_iq3_ref.c",
    "csrc/matmul_iq3_avx2.c",
    "csrc/matmul_iq1_ref.c",
    "csrc/matmul_iq1_avx2.c",
    "csrc/matmul_tq_ref.c",
    "csrc/matmul_tq_avx2.c",
    "csrc/ops.c",
    "csrc/ops_avx2.c",
    "csrc/forward.c",
    "csrc/ticker.c",
    "csrc/trap_signals.c",
]

extensions = [
    Extension(
        "realm._native",
        sources=NATIVE_SOURCES,
        include_dirs=["csrc"],
        libraries=["m", "dl"] if sys.platform.startswith("linux") else ["m"],  # dladdr: csrc/trap_signals.c
        depends=[*sorted(glob.glob("csrc/*.h")), *sorted(glob.glob("realm/*.pxi"))],
    ),
]

setup(
    ext_modules=cythonize(extensions, language_level=3),
    cmdclass={"build_ext": BuildExt, "build_py": BuildPy},
)
