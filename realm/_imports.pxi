# The C trampoline of realm's Wasmtime imports (realm/host.py): included by _native.pyx.
#
# wasmtime-py calls a Python import through its own Python trampoline, which wraps every
# argument and the result in `Val` objects (making and freeing a ValType for each) and the
# caller in a `Caller`, then looks the guest's memory up through more ctypes calls: about as
# much GIL-held time as the import's own work, per call, and a batched pass waits for every
# tenant's call.  Here an import is defined with Wasmtime's "unchecked" C callback: this
# trampoline reads the raw arguments, finds the caller's exported "memory" with the C API, and
# calls the Python import with plain ints: fn(base, size, *args) -> int.
#
# realm/host.py hands over the addresses of the C API functions (from wasmtime-py's own
# library, so one Wasmtime is in play) and the layout of wasmtime_extern_t as its ctypes
# bindings declare it; this module imports nothing of Wasmtime.

from cpython.ref cimport PyObject, Py_INCREF, Py_XDECREF
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t, uintptr_t
from libc.string cimport strlen

cdef extern from *:
    """
    #if PY_VERSION_HEX >= 0x030D0000
    #define realm_py_finalizing() Py_IsFinalizing()
    #else
    #define realm_py_finalizing() _Py_IsFinalizing()
    #endif
    """
    int realm_py_finalizing() noexcept nogil

ctypedef union _RawVal:  # wasmtime_val_raw_t: 16 bytes, the integers little-endian at offset 0
    int32_t i32
    uint32_t u32
    int64_t i64
    uint64_t u64
    uint8_t bytes_[16]

ctypedef void *(*_context_fn)(void *caller) noexcept nogil
ctypedef bint (*_export_get_fn)(void *caller, const char *name, size_t len, void *item) noexcept nogil
ctypedef uint8_t *(*_memory_data_fn)(void *context, const void *memory) noexcept nogil
ctypedef size_t (*_memory_size_fn)(void *context, const void *memory) noexcept nogil
ctypedef void (*_set_deadline_fn)(void *context, uint64_t ticks) noexcept nogil
ctypedef void *(*_trap_new_fn)(const char *msg, size_t len) noexcept nogil
ctypedef void (*_extern_delete_fn)(void *item) noexcept nogil

cdef struct _WasmtimeApi:
    _context_fn caller_context
    _export_get_fn caller_export_get
    _memory_data_fn memory_data
    _memory_size_fn memory_data_size
    _set_deadline_fn set_epoch_deadline
    _trap_new_fn trap_new
    _extern_delete_fn extern_delete
    size_t of_offset     # offsetof(wasmtime_extern_t, of): the memory's handle
    uint8_t memory_kind  # WASMTIME_EXTERN_MEMORY
    int64_t deadline     # the import result after which the guest's epoch deadline is now

cdef _WasmtimeApi _api
cdef bint _api_ready = False
cdef object _on_exception = None

cdef enum:
    _EXTERN_WORDS = 8  # room for a wasmtime_extern_t of up to 64 bytes (32 in Wasmtime 50-51)


def wasmtime_api(dict fns, size_t extern_size, size_t of_offset, int memory_kind, int64_t deadline,
                 on_exception) -> None:
    """Set the C API functions (name -> address) the trampoline calls, wasmtime_extern_t's
    size and the offset of its union, the memory kind, the result that expires the guest's
    epoch deadline, and on_exception(exc): how a BaseException raised by an import reaches
    the code that called into the guest."""
    global _api_ready, _on_exception
    if extern_size > 8 * _EXTERN_WORDS or of_offset >= extern_size:
        raise InternalError(f"wasmtime_extern_t of {extern_size} bytes (union at {of_offset}) does not fit the trampoline")
    _api.caller_context = <_context_fn><uintptr_t>fns["wasmtime_caller_context"]
    _api.caller_export_get = <_export_get_fn><uintptr_t>fns["wasmtime_caller_export_get"]
    _api.memory_data = <_memory_data_fn><uintptr_t>fns["wasmtime_memory_data"]
    _api.memory_data_size = <_memory_size_fn><uintptr_t>fns["wasmtime_memory_data_size"]
    _api.set_epoch_deadline = <_set_deadline_fn><uintptr_t>fns["wasmtime_context_set_epoch_deadline"]
    _api.trap_new = <_trap_new_fn><uintptr_t>fns["wasmtime_trap_new"]
    _api.extern_delete = <_extern_delete_fn><uintptr_t>fns["wasmtime_extern_delete"]
    _api.of_offset = of_offset
    _api.memory_kind = <uint8_t>memory_kind
    _api.deadline = deadline
    _on_exception = on_exception
    _api_ready = True


cdef void *_trap(const char *why) noexcept nogil:
    return _api.trap_new(why, strlen(why))


cdef void *_dispatch(object env, void *context, uintptr_t base, size_t size, _RawVal *vals) noexcept:
    """Call the import (env: (fn, i64 params, i64 result)) with the GIL held; NULL or a trap."""
    cdef Py_ssize_t i
    cdef int64_t code
    try:
        fn, wide, wide_result = <tuple>env
        args = [base, size]
        for i in range(len(<tuple>wide)):
            args.append(vals[i].i64 if (<tuple>wide)[i] else vals[i].u32)  # an i32 is read as u32, once
        result = fn(*args)
        code = <int64_t>result  # an import answers with an int that fits its result
        if code == _api.deadline:  # the store's deadline is now; the guest's code sees it once
            _api.set_epoch_deadline(context, 0)  # the deadline it cached (the same moment) passes
        if wide_result:
            vals[0].i64 = code
        else:
            vals[0].u64 = 0
            vals[0].i32 = <int32_t>code
        return NULL
    except BaseException as exc:  # Ctrl-C, or a host bug: the guest's caller sees it
        try:
            _on_exception(exc)
        except BaseException:
            pass
        return _trap("a realm import raised an exception")


cdef void *_trampoline(void *env, void *caller, _RawVal *vals, size_t n) noexcept nogil:
    cdef uint64_t item[_EXTERN_WORDS]
    cdef void *context = _api.caller_context(caller)
    cdef uintptr_t base = 0
    cdef size_t size = 0
    if _api.caller_export_get(caller, "memory", 6, item):
        if (<uint8_t *>item)[0] == _api.memory_kind:  # not a shared memory, nor a function
            size = _api.memory_data_size(context, <uint8_t *>item + _api.of_offset)
            base = <uintptr_t>_api.memory_data(context, <uint8_t *>item + _api.of_offset)
        _api.extern_delete(item)
    with gil:
        return _dispatch(<object>env, context, base, size, vals)


cdef void _release_env(void *env) noexcept nogil:
    """Wasmtime drops a defined import (its linker is deleted): the Python objects go too,
    unless the interpreter is shutting down (where taking the GIL is not safe)."""
    if realm_py_finalizing():
        return
    with gil:
        Py_XDECREF(<PyObject *>env)


def import_trampoline() -> tuple:
    """(callback, finalizer) addresses for wasmtime_linker_define_func_unchecked."""
    if not _api_ready:
        raise InternalError("wasmtime_api() was not called")
    return <uintptr_t>_trampoline, <uintptr_t>_release_env


def import_env(fn, tuple wide, bint wide_result) -> int:
    """A new reference to the import's (fn, wide, wide_result), as the env pointer of its
    definition (_release_env drops it): wide[i] -- parameter i is an i64 (else an i32)."""
    env = (fn, tuple(bool(w) for w in wide), wide_result)
    Py_INCREF(env)
    return <uintptr_t><PyObject *>env
