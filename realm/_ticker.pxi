# The epoch ticker (csrc/ticker.h) for realm/limits.py: included by _native.pyx.

cdef extern from "ticker.h":
    int REALM_TICKER_MAX_ENGINES
    ctypedef void (*realm_epoch_fn)(void *engine) noexcept nogil
    int realm_ticker_add(realm_epoch_fn increment, void *engine, long long period_ns)
    void realm_ticker_clear()
    long long realm_ticker_ticks()

#: Engines the ticker can hold.
TICKER_MAX_ENGINES = REALM_TICKER_MAX_ENGINES


def ticker_add(size_t increment, size_t engine, long long period_ns) -> None:
    """Have the ticker thread call increment(engine) every period_ns (addresses of
    wasmtime_engine_increment_epoch and of a wasm_engine_t that lives as long as the process)."""
    cdef int rc = realm_ticker_add(<realm_epoch_fn>increment, <void *>engine, period_ns)
    if rc:
        raise InternalError(f"the epoch ticker refused an engine (code {rc}; it holds at most "
                            f"{REALM_TICKER_MAX_ENGINES})")


def ticker_clear() -> None:
    """Have the ticker forget every engine (at exit, before they are freed)."""
    realm_ticker_clear()


def ticker_ticks() -> int:
    """Periods elapsed since the ticker started."""
    return realm_ticker_ticks()
