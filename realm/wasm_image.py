"""A wasm module whose linear memory starts as a given image (a guest snapshot).

`with_memory_image(wasm, size, runs)` returns the module's bytes with its memory's initial
size raised to `size` bytes and its data segments replaced by one active segment per run of
`runs` ((offset, bytes) pairs). Instantiating it gives a memory that holds exactly the image:
Wasmtime maps such segments copy-on-write from one shared image (its `memory_init_cow`, on by
default on Linux), so a new instance costs no copy, and its pages are shared until written.

Only what realm's guest needs is supported: one memory defined by the module (not imported,
not shared, 32-bit) and active data segments (code that refers to passive segments by index
would see others). Anything else raises InternalError: the guest is realm's own build.
"""

from __future__ import annotations

from typing import Iterable

from .errors import InternalError

__all__ = ["with_memory_image"]

_MAGIC = b"\0asm\x01\0\0\0"
_MEMORY, _CODE, _DATA, _DATA_COUNT = 5, 10, 11, 12
_PAGE = 65536


def _uleb(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data):
            raise InternalError("a truncated LEB128 number in the module")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at


def _put_uleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _put_sleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        done = (value == 0 and not byte & 0x40) or (value == -1 and byte & 0x40)
        out.append(byte | (0 if done else 0x80))
        if done:
            return bytes(out)


def _sections(wasm: bytes) -> list[tuple[int, bytes]]:
    if wasm[:8] != _MAGIC:
        raise InternalError("not a wasm module (version 1)")
    out, at = [], 8
    while at < len(wasm):
        sid = wasm[at]
        size, start = _uleb(wasm, at + 1)
        if start + size > len(wasm):
            raise InternalError("a section runs past the end of the module")
        out.append((sid, wasm[start:start + size]))
        at = start + size
    return out


def _section(sid: int, payload: bytes) -> bytes:
    return bytes([sid]) + _put_uleb(len(payload)) + payload


def _memory_section(payload: bytes, size: int) -> bytes:
    """The one memory's limits with its minimum raised to `size` bytes (in pages)."""
    count, at = _uleb(payload, 0)
    if count != 1:
        raise InternalError(f"the module defines {count} memories, not one")
    flags = payload[at]
    if flags not in (0, 1):  # 2: shared, 4: 64-bit
        raise InternalError(f"memory limits with flags {flags:#x} are not supported")
    low, at = _uleb(payload, at + 1)
    high = None
    if flags == 1:
        high, at = _uleb(payload, at)
    pages = max(low, -(-size // _PAGE))
    if high is not None and pages > high:
        raise InternalError(f"an image of {size} bytes passes the memory's maximum of {high} pages")
    limits = _put_uleb(pages) + (b"" if high is None else _put_uleb(high))
    return _put_uleb(1) + bytes([flags]) + limits


def _check_active(payload: bytes) -> None:
    """Every data segment is active in memory 0 (flag 0): none is referred to by index."""
    count, at = _uleb(payload, 0)
    for _ in range(count):
        flag, at = _uleb(payload, at)
        if flag != 0:
            raise InternalError(f"a data segment with flag {flag} (passive or in another memory)")
        if payload[at] != 0x41:  # the offset: i32.const <sleb> end
            raise InternalError("a data segment whose offset is not an i32.const")
        at += 1
        while payload[at] & 0x80:
            at += 1
        if payload[at + 1] != 0x0B:
            raise InternalError("a data segment whose offset is not an i32.const")
        length, at = _uleb(payload, at + 2)
        at += length


def with_memory_image(wasm: bytes, size: int, runs: Iterable[tuple[int, bytes]]) -> bytes:
    """The module `wasm` with a memory of at least `size` bytes that starts as `runs` (its
    other bytes zero): see the module docstring."""
    segments = bytearray()
    count = 0
    for offset, data in runs:
        if offset < 0 or offset + len(data) > size:
            raise InternalError(f"a run at {offset} of {len(data)} bytes lies outside {size} bytes")
        if not data:
            continue
        signed = offset - (1 << 32) if offset >= 1 << 31 else offset  # i32.const is signed
        segments += b"\x00\x41" + _put_sleb(signed) + b"\x0b" + _put_uleb(len(data)) + data
        count += 1
    data_section = _section(_DATA, _put_uleb(count) + bytes(segments))
    out = bytearray(_MAGIC)
    sections = _sections(wasm)
    memories, pending = 0, not any(sid == _DATA for sid, _ in sections)  # none: one goes after the code
    for sid, payload in sections:
        if sid == 2 and _imports_memory(payload):
            raise InternalError("the module imports its memory")
        if sid == _MEMORY:
            out += _section(_MEMORY, _memory_section(payload, size))
            memories += 1
        elif sid == _DATA_COUNT:
            raise InternalError("the module counts its data segments (bulk memory): not supported")
        elif sid == _DATA:
            _check_active(payload)
            out += data_section
        else:
            out += _section(sid, payload)
            if sid == _CODE and pending:
                out += data_section
                pending = False
    if memories != 1:
        raise InternalError("the module defines no memory of its own")
    if pending:
        raise InternalError("the module has no code section")
    return bytes(out)


def _imports_memory(payload: bytes) -> bool:
    """Whether the import section imports a memory."""
    count, at = _uleb(payload, 0)
    for _ in range(count):
        for _name in range(2):  # module, field
            length, at = _uleb(payload, at)
            at += length
        kind = payload[at]
        at += 1
        if kind == 2:
            return True
        if kind == 0:  # a function: its type index
            _, at = _uleb(payload, at)
        elif kind == 1:  # a table: reftype, limits
            at += 1
            flags, at = _uleb(payload, at)
            _, at = _uleb(payload, at)
            if flags & 1:
                _, at = _uleb(payload, at)
        elif kind == 3:  # a global: valtype, mutability
            at += 2
        else:
            raise InternalError(f"an import of kind {kind} is not supported")
    return False
