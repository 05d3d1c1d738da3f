"""Fuzz the guest's strict GGUF header parser (guest/gguf_meta.c, guest/model_config.c),
built natively as a shared library with tests/fuzz/guest_parser_shim.c and called via ctypes.

    python tests/fuzz/fuzz_guest_parser.py -max_total_time=600 -artifact_prefix=/tmp/f/ CORPUS_DIR

Each input goes to the shim's check() in a buffer of exactly its size; check() parses it,
builds the model config, finds every key and tensor again and reads every key through every
typed getter (see the shim).  The answer must be 0, REALM_E_BAD_GGUF or REALM_E_NO_MEMORY; a
sanitizer report, a broken invariant (abort) or any other signal is a finding.

The library is built, once per source change, into $REALM_FUZZ_BUILD (default: a folder in
the system's temp dir) in the first variant that works (REALM_FUZZ_VARIANT picks one):

  clang-asan  `python -m ziglang cc -c` (clang; linked by gcc where there is one), guest sources
              with inline 8-bit counters, a PC table and comparison tracing for libFuzzer,
              UBSan (trapping) and AddressSanitizer
              -- whose runtime zig lacks, so gcc's libasan is LD_PRELOADed (the script re-runs
              itself with it, ASAN_OPTIONS=detect_leaks=0); the input buffer is malloc'ed.
  gcc-asan    gcc, -fsanitize-coverage=trace-pc,trace-cmp (the shim maps block addresses onto
              8-bit counters), UBSan (trapping), AddressSanitizer as above.
  clang, gcc  the same without AddressSanitizer: the input then ends at an inaccessible page,
              so a read past its end still faults.

Every variant feeds the C code's coverage to atheris's libFuzzer (the shim forwards the
sanitizer-coverage callbacks to it, see there), so the mutations are guided by the C parser's
branches and comparisons.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import GUEST, Finding, abi_codes  # noqa: E402

HERE = Path(__file__).resolve().parent
SHIM = HERE / "guest_parser_shim.c"
SOURCES = [GUEST / "gguf_meta.c", GUEST / "model_config.c"]
VARIANTS = ["clang-asan", "gcc-asan", "clang", "gcc"]
_LIB_ENV, _VARIANT_ENV = "_REALM_FUZZ_GUEST_LIB", "_REALM_FUZZ_GUEST_VARIANT"


def _zig() -> list[str] | None:
    return [sys.executable, "-m", "ziglang", "cc"] if importlib.util.find_spec("ziglang") else None


def _gcc() -> list[str] | None:
    cc = shutil.which("gcc")
    return [cc] if cc else None


def libasan() -> str | None:
    """gcc's AddressSanitizer runtime (the one a clang-instrumented library can use too)."""
    cc = _gcc()
    if cc is None:
        return None
    out = subprocess.run(cc + ["-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    path = os.path.realpath(out) if out else ""
    return path if os.path.isabs(out) and os.path.isfile(path) else None


def _flags(variant: str) -> tuple[list[str] | None, list[str], list[str]]:
    """(compiler, flags of the guest sources, flags of the shim) of a variant."""
    clang = variant.startswith("clang")
    cc = _zig() if clang else _gcc()
    common = ["-g", "-fPIC", "-std=c11", "-fno-omit-frame-pointer", f"-I{GUEST}"]
    if clang:
        guest = ["-O1", "-fsanitize-coverage=inline-8bit-counters,pc-table,trace-cmp",
                 "-fsanitize=undefined", "-fsanitize-trap=undefined"]
        shim = ["-O2"]
    else:
        guest = ["-O1", "-fsanitize-coverage=trace-pc,trace-cmp", "-fsanitize=undefined",
                 "-fsanitize-undefined-trap-on-error"]
        shim = ["-O2", "-DFUZZ_TRACE_PC"]
    if variant.endswith("-asan"):
        guest.append("-fsanitize=address")
    return cc, common + guest, common + shim


def _env(variant: str, lib: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if variant.endswith("-asan"):
        asan = libasan()
        assert asan is not None
        env["LD_PRELOAD"] = " ".join(p for p in (asan, env.get("LD_PRELOAD", "")) if p)
        # Python's allocations at exit are not ours; libFuzzer's malloc limit needs ASan's hooks
        env["ASAN_OPTIONS"] = ":".join(p for p in (env.get("ASAN_OPTIONS", ""),
                                                   "detect_leaks=0", "abort_on_error=0") if p)
    if lib is not None:
        env[_LIB_ENV], env[_VARIANT_ENV] = lib, variant
    return env


def build(variant: str, log=sys.stderr) -> Path | None:
    """The library of one variant (built and load-tested unless cached), or None if it does not build here."""
    cc, guest_flags, shim_flags = _flags(variant)
    if cc is None or (variant.endswith("-asan") and libasan() is None):
        return None
    h = hashlib.sha256(repr((variant, cc[-1], guest_flags, shim_flags)).encode())
    for src in [*SOURCES, SHIM, *GUEST.glob("*.h")]:
        h.update(src.name.encode() + src.read_bytes())
    root = Path(os.environ.get("REALM_FUZZ_BUILD") or Path(tempfile.gettempdir()) / "realm-fuzz-build")
    out = root / f"guest-parser-{variant}-{h.hexdigest()[:16]}"
    lib = out / "libguest_parser.so"
    if (out / "ok").exists():
        return lib
    out.mkdir(parents=True, exist_ok=True)
    objs, pid = [], os.getpid()  # per-process names: parallel sessions may build the same variant
    try:
        for src in SOURCES:
            objs.append(out / f"{src.stem}.{pid}.o")
            subprocess.run(cc + guest_flags + ["-c", str(src), "-o", str(objs[-1])], check=True,
                           capture_output=True, text=True)
        objs.append(out / f"shim.{pid}.o")
        subprocess.run(cc + shim_flags + ["-c", str(SHIM), "-o", str(objs[-1])], check=True,
                       capture_output=True, text=True)
        tmp = out / f"lib.{pid}.so"
        # gcc links clang's objects too, and saves zig building its libc stubs on a cold cache
        subprocess.run((_gcc() or cc) + ["-shared", *map(str, objs), "-o", str(tmp)], check=True,
                       capture_output=True, text=True)
        probe = subprocess.run([sys.executable, "-c", "import ctypes, sys; l = ctypes.CDLL(sys.argv[1]); "
                                "sys.exit(l.check(b'GGUF', 4, 0) != -8)", str(tmp)],
                               env=_env(variant), capture_output=True, text=True, timeout=120)
        if probe.returncode != 0:
            print(f"fuzz_guest_parser: the {variant} build does not load: {probe.stderr[-2000:]}", file=log)
            tmp.unlink(missing_ok=True)
            return None
    except subprocess.CalledProcessError as exc:
        print(f"fuzz_guest_parser: no {variant} build: {' '.join(exc.cmd[-4:])}\n{exc.stderr[-2000:]}", file=log)
        return None
    finally:
        for obj in objs:
            obj.unlink(missing_ok=True)
    os.replace(tmp, lib)
    (out / "ok").write_text(variant)
    return lib


def choose() -> tuple[str, Path]:
    wanted = os.environ.get("REALM_FUZZ_VARIANT")
    for variant in [wanted] if wanted else VARIANTS:
        lib = build(variant)
        if lib is not None:
            return variant, lib
    raise SystemExit(f"fuzz_guest_parser: could not build {wanted or 'any variant'} (see above)")


def main(argv: list[str]) -> None:
    lib_path, variant = os.environ.get(_LIB_ENV), os.environ.get(_VARIANT_ENV)
    if lib_path is None:
        variant, lib = choose()
        if variant.endswith("-asan"):  # the ASan runtime must come first: run again with it preloaded
            sys.stdout.flush()
            sys.stderr.flush()
            os.execve(sys.executable, [sys.executable, *argv], _env(variant, str(lib)))
        lib_path = str(lib)

    import atheris

    codes = abi_codes()
    allowed = {0, codes["BAD_GGUF"], codes["NO_MEMORY"]}
    guard = 0 if variant.endswith("-asan") else 1
    native = ctypes.CDLL(lib_path)
    native.check.argtypes = [ctypes.c_char_p, ctypes.c_uint32, ctypes.c_int]
    native.fuzz_register.argtypes = [ctypes.c_char_p]
    native.fuzz_register.restype = ctypes.c_long
    registered = []

    def register() -> None:
        """Once atheris has loaded its libFuzzer: hand it the C coverage."""
        core = sys.modules.get("atheris.core_with_libfuzzer")
        where = getattr(core, "__file__", None)
        n = native.fuzz_register(where.encode() if where else None)
        kind = {2: "inline 8-bit counters + PC table", 1: "trace-pc hashed onto 8-bit counters", 0: "none"}
        print(f"fuzz_guest_parser: variant {variant}; C coverage: {kind[native.coverage_kind()]}, "
              f"{n} counters handed to libFuzzer ({where or 'global scope'}); input buffer "
              f"{'exact-size malloc (ASan)' if not guard else 'ends at a PROT_NONE page'}", file=sys.stderr)
        if n < 0:
            raise SystemExit("fuzz_guest_parser: atheris's libFuzzer not found")
        registered.append(n)

    def test_one_input(data: bytes) -> None:
        if not registered:
            register()
        rc = native.check(data, len(data), guard)
        if rc not in allowed:
            raise Finding(f"check() returned {rc}, not 0, BAD_GGUF or NO_MEMORY")

    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
