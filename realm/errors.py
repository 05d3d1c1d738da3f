"""realm's exception types.

Each one also derives from the built-in exception a caller would naturally
catch (`ValueError` for bad files, `KeyError` for unknown names), so code that
does not know about realm still handles them.
"""


class RealmError(Exception):
    """Base class of every error realm raises on purpose."""


class GGUFError(RealmError, ValueError):
    """A GGUF file (or buffer) is malformed, truncated, hostile or unsupported."""


class ModelNotFoundError(RealmError, KeyError):
    """No model with that id is in the store (never loaded, or removed and released)."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


class TensorNotFoundError(RealmError, KeyError):
    """The model has no tensor of that name."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class PullError(RealmError, RuntimeError):
    """A model could not be fetched or did not match its recorded checksum."""
