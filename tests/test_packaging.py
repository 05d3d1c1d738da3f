"""The wheel: built from this checkout, it carries the one extension and guest.wasm,
and runs from a fresh install location with no compiler on PATH."""

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_and_runs_without_a_compiler(tmp_path, tiny_gguf):
    pip = [sys.executable, "-m", "pip"]
    # the real path: an isolated build environment with pyproject.toml's build requirements
    build = subprocess.run([*pip, "wheel", "--no-deps", "-w", str(tmp_path / "dist"), str(ROOT)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("realm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for member in ("realm/guest.wasm", "realm/__init__.py"):
        assert member in names
    natives = [n for n in names if n.endswith(".so")]
    assert len(natives) == 1 and natives[0].startswith("realm/_native."), natives  # one extension

    site = tmp_path / "site"
    install = subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]

    # PATH holds the interpreter alone: no cc, gcc or zig can be found.
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "python").symlink_to(sys.executable)
    bare_path = str(bare)
    for tool in ("cc", "gcc", "clang", "zig"):
        assert shutil.which(tool, path=bare_path) is None
    deps = [p for p in sys.path if p.endswith("site-packages")]  # numpy, wasmtime, jinja2
    env = {"PATH": bare_path, "PYTHONPATH": os.pathsep.join([str(site), *deps]), "HOME": str(tmp_path)}
    script = (
        "import realm, numpy as np\n"
        "assert realm.__file__.startswith(%r), realm.__file__\n"
        "print(realm.dequantize(np.arange(36, dtype=np.uint8), 'Q4_0')[:2])\n"
        "from realm.guest import Guest\n"
        "store = realm.ModelStore()\n"
        "mid = store.load(%r)\n"
        "with Guest(store) as g:\n"
        "    g.attach(mid)\n"
        "    print(g.config.n_layers)\n"
    ) % (str(site), str(tiny_gguf))
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]


def test_native_extension_imports_no_module_that_imports_it():
    """realm._native (realm/_native.pyx and the .pxi files it includes) imports only realm's
    pure-Python leaves, so realm.quants -- which reads the extension's table of formats at
    import -- can import it without a cycle."""
    sources = [ROOT / "realm" / "_native.pyx", *sorted((ROOT / "realm").glob("*.pxi"))]
    imported = {m for src in sources for m in re.findall(r"^\s*from \.(\w+) c?import", src.read_text(), re.M)}
    assert imported <= {"errors", "threads", "ggml_types"}, imported
    for leaf in ("errors", "threads", "ggml_types"):
        deps = set(re.findall(r"^\s*from \.(\w+) import", (ROOT / "realm" / f"{leaf}.py").read_text(), re.M))
        assert deps <= {"errors"}, (leaf, deps)
