# Wasmtime's trap signal handlers (csrc/trap_signals.h) for realm/limits.py: included by _native.pyx.

from libc.stdint cimport uintptr_t

cdef extern from "trap_signals.h":
    int REALM_SIG_EINVAL
    int REALM_SIG_ENONE
    int realm_signal_handler(int sig, uintptr_t *handler)
    int realm_same_object(uintptr_t a, uintptr_t b)
    int realm_signal_save(int sig)
    int realm_signal_restore(int sig)


def signal_handler(int sig) -> int:
    """The address of the handler now installed for sig (0: SIG_DFL, 1: SIG_IGN)."""
    cdef uintptr_t handler = 0
    if realm_signal_handler(sig, &handler):
        raise InvalidArgumentError(f"{sig} is not a signal number sigaction takes")
    return handler


def same_object(size_t a, size_t b) -> bool:
    """Whether code addresses a and b lie in the same loaded object."""
    return realm_same_object(a, b) == 1


def signal_save(int sig) -> None:
    """Save sig's current action (handler, mask, flags) for signal_restore."""
    if realm_signal_save(sig):
        raise InvalidArgumentError(f"{sig} is not a signal number sigaction takes")


def signal_restore(int sig) -> None:
    """Install the action signal_save saved for sig again."""
    cdef int rc = realm_signal_restore(sig)
    if rc == REALM_SIG_ENONE:
        raise InvalidArgumentError(f"no action of signal {sig} was saved")
    if rc:
        raise InternalError(f"sigaction refused to restore signal {sig}")
