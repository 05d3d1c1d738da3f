"""`realm.patch_gguf()`: gguf-py's `dequantize` through realm's kernels, for programs built on gguf-py.

    import realm
    realm.patch_gguf()                  # from here on gguf.dequantize runs realm's C kernels
    with realm.patch_gguf(): ...        # or only inside the block

gguf-py (`pip install gguf`) stays an optional dependency: it is imported when a patch
is made, never when realm is.  The patch replaces the two bindings a caller reaches at
call time, `gguf.quants.dequantize` and its re-export `gguf.dequantize` (transformers'
GGUF loader does `from gguf import GGUFReader, dequantize` inside the loading
function, so it is reached); a name bound by `from gguf import dequantize` before
the patch is made keeps gguf-py's function.

Results are gguf-py's own: same dtype, shape and values.  A call goes to
`realm.dequantize` only when realm gives exactly what gguf-py gives; everything else
goes to gguf-py's original function, errors included:
- F32 stays with gguf-py, whose result is a view of the input (no copy to speed up);
- types gguf-py does not implement (Q8_K) still raise gguf-py's NotImplementedError;
- lazy tensors, empty or 0-d arrays, blocks of another dtype than bytes, and a last
  axis that is not whole blocks go to gguf-py; non-contiguous or misaligned bytes
  are copied first (gguf-py copies them too).

Patches are counted: each `patch_gguf()` returns a `GGUFPatch` holding the patch
once; `GGUFPatch.undo()` (or leaving its `with` block) lets go of that hold, and the
originals come back, exactly the objects that were there, when the last hold goes.
So nested and repeated patches are safe, and undoing a hold twice is a no-op.
"""

from __future__ import annotations

import functools
import threading
from types import ModuleType
from typing import Any, Callable

import numpy as np

from . import quants as _quants
from .errors import MissingDependencyError, RealmError
from .quants import GGMLType, SUPPORTED_TYPES

__all__ = ["GGUFPatch", "patch_gguf"]

_lock = threading.Lock()
_holds = 0
#: (module, attribute, gguf-py's object, realm's wrapper) for each binding patched.
_bindings: list[tuple[ModuleType, str, Any, Callable[..., Any]]] = []
#: Types routed to realm: realm has a kernel and gguf-py an implementation (set by the first patch).
_routed: frozenset[GGMLType] = frozenset()


class GGUFPatch:
    """One hold on the gguf-py patch, returned by `patch_gguf()`; a context manager.

    `undo()` lets go of this hold (a second call does nothing); gguf-py's own
    functions come back when no hold is left.
    """

    def __init__(self) -> None:
        self._held = True

    @property
    def active(self) -> bool:
        """Whether this hold is still held (gguf-py is patched while any hold is)."""
        return self._held

    def undo(self) -> None:
        """Let go of this hold; the last hold to go restores gguf-py's originals."""
        global _holds
        with _lock:
            if not self._held:
                return
            self._held = False
            _holds -= 1
            if _holds == 0:
                _restore()

    def __enter__(self) -> GGUFPatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.undo()

    def __repr__(self) -> str:
        return f"<realm.GGUFPatch {'active' if self._held else 'undone'}>"


def patch_gguf() -> GGUFPatch:
    """Route `gguf.quants.dequantize` (and `gguf.dequantize`) through `realm.dequantize`.

    Every type both realm and gguf-py dequantize (F16, BF16, Q4_0 ... Q6_K) runs on
    realm's kernels, on every core; anything else, and any input realm would treat
    differently, goes to gguf-py's original function, so results (dtype, shape,
    values) and errors are gguf-py's.  Returns a `GGUFPatch`: use it as a context
    manager, or call its `undo()`.  Patches nest; the last `undo()` restores the
    original functions.  Raises `realm.MissingDependencyError` when gguf-py is not
    installed (or too old to have `gguf.quants.dequantize`).
    """
    global _holds
    gguf, gq = _import_gguf()
    with _lock:
        if _holds == 0:
            _install(gguf, gq)
        _holds += 1
        return GGUFPatch()


def _import_gguf() -> tuple[ModuleType, ModuleType]:
    try:
        import gguf
        import gguf.quants as gq
    except ImportError as exc:
        raise MissingDependencyError(
            f"realm.patch_gguf needs gguf-py, which is not installed ({exc}); pip install gguf") from exc
    if not callable(getattr(gq, "dequantize", None)):
        version = getattr(gguf, "__version__", "this version")
        raise MissingDependencyError(f"gguf-py {version} has no gguf.quants.dequantize to patch; "
                                     "realm.patch_gguf needs gguf >= 0.10")
    return gguf, gq


def _install(gguf: ModuleType, gq: ModuleType) -> None:
    global _routed
    _routed = _routed_types(gq)
    wrappers: dict[int, Callable[..., Any]] = {}  # one wrapper per distinct original
    for module in (gq, gguf):
        original = getattr(module, "dequantize", None)
        if original is None:
            continue
        if id(original) not in wrappers:
            wrappers[id(original)] = _wrap(original)
        _bindings.append((module, "dequantize", original, wrappers[id(original)]))
        setattr(module, "dequantize", wrappers[id(original)])


def _restore() -> None:
    """Put gguf-py's objects back where the binding is still realm's wrapper; a binding someone
    replaced since is left to them (the wrapper, if they call it, now passes straight through)."""
    while _bindings:
        module, name, original, wrapper = _bindings.pop()
        if getattr(module, name, None) is wrapper:
            setattr(module, name, original)


def _routed_types(gq: ModuleType) -> frozenset[GGMLType]:
    """realm's types that gguf-py dequantizes by decoding: F16 (a cast there) and the block
    types in gguf-py's table.  F32 stays with gguf-py, whose result is a view of the input."""
    table = getattr(gq, "_type_traits", None)
    if isinstance(table, dict):
        implemented = {int(k) for k in table} | {int(GGMLType.F16)}
    else:  # a gguf-py without the table: the types gguf-py 0.10 to 0.19 implement
        implemented = {int(t) for t in SUPPORTED_TYPES if t != GGMLType.Q8_K}
    return frozenset(t for t in SUPPORTED_TYPES if t != GGMLType.F32 and int(t) in implemented)


def _wrap(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def dequantize(data: np.ndarray, qtype: Any) -> np.ndarray:
        if _holds:
            raw = _realm_input(data, qtype)
            if raw is not None:
                try:
                    out = _quants.dequantize(raw, GGMLType(int(qtype)))
                    # gguf-py's F16 cast keeps the input's class: GGUFReader's tensors are memmaps
                    return out.view(np.memmap) if isinstance(data, np.memmap) and qtype == GGMLType.F16 else out
                except RealmError:  # not expected after _realm_input's checks; gguf-py decides
                    pass
        return original(data, qtype)

    dequantize.__realm_patch__ = True  # type: ignore[attr-defined]
    return dequantize


def _realm_input(data: Any, qtype: Any) -> np.ndarray | None:
    """The bytes realm dequantizes to exactly gguf-py's result, or None to leave the call to gguf-py."""
    if not isinstance(data, np.ndarray) or data.ndim == 0 or data.size == 0:
        return None
    if isinstance(qtype, bool) or not isinstance(qtype, (int, np.integer)):
        return None
    try:
        t = GGMLType(int(qtype))
    except ValueError:
        return None
    if t not in _routed:
        return None
    info = _quants.quant_info(t)
    if t == GGMLType.F16:
        # gguf-py: data.view(np.float16).astype(np.float32), for any dtype whose last axis
        # reinterprets as whole halves; realm reads the same bytes.  Only C-contiguous arrays:
        # where the last axis is not contiguous gguf-py's view raises, and it should still.
        if not data.flags.c_contiguous or data.dtype.hasobject:
            return None
        if type(data) not in (np.ndarray, np.memmap):
            return None  # its astype would keep another subclass, with that subclass's own finalizing
        try:
            raw = data.view(np.uint8)
        except (TypeError, ValueError):
            return None
    else:
        # gguf-py reads blocks of bytes; with wider items its shapes disagree and it raises.
        if data.dtype.itemsize != 1 or data.dtype.kind not in "uib":
            return None
        raw = data.view(np.uint8)
    if raw.shape[-1] % info.type_size:
        return None  # gguf-py raises its own error
    if not raw.flags.c_contiguous or raw.ctypes.data % info.align:
        raw = np.array(raw, order="C")  # a fresh, aligned copy, as gguf-py's reshape copies
    return raw
