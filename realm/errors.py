"""realm's exception types: every error realm raises is a `RealmError`.

Each one also derives from the built-in exception a caller would naturally
catch (`ValueError` for bad files and arguments, `TypeError` for arguments of
the wrong type, `KeyError` for unknown names, `TimeoutError` for a deadline),
so code that does not know about realm still handles them.
"""


class RealmError(Exception):
    """Base class of every error realm raises."""


class InvalidArgumentError(RealmError, ValueError):
    """An argument is outside its documented range or malformed."""


class ArgumentTypeError(RealmError, TypeError):
    """An argument has the wrong type."""


class OutOfRangeError(InvalidArgumentError, IndexError):
    """An index (a layer, a position) lies outside its range."""


class GGUFError(RealmError, ValueError):
    """A GGUF file (or buffer) is malformed, truncated, hostile or unsupported."""


class FileAccessError(RealmError, OSError):
    """A file could not be opened or read (it is missing, unreadable, a directory...);
    `errno` and `filename` are the operating system's."""


def file_error(exc: OSError, path: object) -> FileAccessError:
    """An OSError from opening `path` as a FileAccessError with its errno."""
    return FileAccessError(exc.errno, f"cannot open {path}: {exc.strerror or exc}", str(path))


def check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """value, an int (not a bool) in [low, high] (high None: no bound); ArgumentTypeError or
    InvalidArgumentError naming it otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(f"{name} must be an int, not {type(value).__name__}")
    if high is None and value < low:
        raise InvalidArgumentError(f"{name} must be >= {low}, not {value}")
    if high is not None and not low <= value <= high:
        raise InvalidArgumentError(f"{name} must be {low}..{high}, not {value}")
    return value


class ListenError(RealmError, OSError):
    """A server cannot listen on its address (the port is taken, the host is not this
    machine's, the name does not resolve); `errno` is the operating system's."""


class ModelNotFoundError(RealmError, KeyError):
    """No model with that id is in the store (never loaded, or removed and released)."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


class TensorNotFoundError(RealmError, KeyError):
    """The model has no tensor of that name."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ChatTemplateError(RealmError, ValueError):
    """A model has no chat template, a template does not parse, it refused the messages, or it
    went past its time or size limit."""


class MissingDependencyError(RealmError, ImportError):
    """An optional package a feature needs (e.g. `gguf` for `realm.patch_gguf`) is not installed."""


class PullError(RealmError, RuntimeError):
    """A model could not be fetched or did not match its recorded checksum."""


class ClosedError(RealmError, RuntimeError, ValueError):
    """The object (a store, a tenant, a file) was closed.  A RuntimeError, and a ValueError as
    Python's own closed files raise."""


class BusyError(RealmError, RuntimeError):
    """The object (a KV cache) is in use by another call, which it does not allow."""


class OutOfMemoryError(RealmError, MemoryError):
    """The host could not allocate memory for the request."""


class LimitExceeded(RealmError):
    """A tenant's quota or the host's budget would be exceeded (see `realm.Limits`)."""


class DeadlineExceeded(LimitExceeded, TimeoutError):
    """A call or generation ran past its deadline and was stopped (see `Limits.deadline_s`)."""


class InternalError(RealmError, RuntimeError):
    """Something realm did not expect: a bug (please report it with the message)."""


class TrapHandlerError(RealmError, RuntimeError):
    """Wasmtime's signal handlers, which turn a guest's faults into traps, are no longer
    installed (another library replaced them): realm runs no guest until they are back, since
    a fault would then kill the process (see `realm.restore_trap_handlers`)."""
