"""Build of realm's C/Cython extension (and, later, of the WebAssembly guest)."""

import os
import sys
import tempfile

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

KERNEL_SOURCES = [
    "csrc/dequant.c",
    "csrc/dequant_ref.c",
    "csrc/dequant_avx2.c",
    "csrc/dequant_neon.c",
]

# -ffp-contract=off: the kernels must round every product and sum separately,
# as llama.cpp's reference code does; a fused multiply-add would change bits.
C_FLAGS = ["-O3", "-ffp-contract=off", "-fno-strict-aliasing", "-Wall", "-Wno-unused-function"]
EXTRA_C_FLAGS = os.environ.get("REALM_CFLAGS", "").split()  # e.g. -fsanitize=address,undefined


class BuildExt(build_ext):
    """Adds OpenMP where the compiler has it; without it the kernels run on one thread."""

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


extensions = [
    Extension(
        "realm._quant",
        sources=["realm/_quant.pyx", *KERNEL_SOURCES],
        include_dirs=["csrc"],
        depends=["csrc/quants.h", "csrc/dequant.h", "csrc/fp16.h"],
    ),
]

setup(
    ext_modules=cythonize(extensions, language_level=3),
    cmdclass={"build_ext": BuildExt},
)
