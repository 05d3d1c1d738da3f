"""realm: quantized LLMs from GGUF files in a WebAssembly sandbox, weights kept quantized in the host."""

from .quants import FORWARD_TYPES, SUPPORTED_TYPES, GGMLType, QuantInfo, dequantize, quant_info
from . import fresh  # realm.fresh.release(): unmap the recycled result mappings dequantize keeps
from .errors import (ArgumentTypeError, BusyError, ClosedError, DeadlineExceeded, FileAccessError, GGUFError,
                     InternalError, InvalidArgumentError, LimitExceeded, ListenError, MissingDependencyError,
                     ModelNotFoundError, OutOfMemoryError, OutOfRangeError, PullError, RealmError, TensorNotFoundError,
                     TrapHandlerError)
from .gguf_patch import GGUFPatch, patch_gguf
from .reader import GGUFFile, open_gguf
from .cache import LayerCache
from .limits import GuestTrapError, HostBudget, Limits, restore_trap_handlers, sandbox_engine
from .store import ModelStore, QuantizedTensor, StoredModel
from .chat import ChatTemplate, ChatTemplateError
from .forward import ContextFullError, ForwardConfig, HostModel, KVCache, UnsupportedModelError
from .tenant import Tenant
from .guest import Guest, GuestError
from .host import TokenLogprob
from .runtime import Completion, ContextWindowError, GenerationError, Model, Realm, TextStream, Usage

__all__ = ["GGMLType", "QuantInfo", "SUPPORTED_TYPES", "FORWARD_TYPES", "dequantize", "quant_info", "patch_gguf", "GGUFPatch",
           "RealmError", "InvalidArgumentError", "ArgumentTypeError", "OutOfRangeError", "GGUFError",
           "FileAccessError", "ListenError", "ModelNotFoundError", "TensorNotFoundError", "PullError", "ClosedError", "BusyError",
           "OutOfMemoryError", "MissingDependencyError", "LimitExceeded", "DeadlineExceeded", "InternalError",
           "GGUFFile", "open_gguf", "LayerCache", "ModelStore", "QuantizedTensor", "StoredModel",
           "Limits", "HostBudget", "sandbox_engine", "restore_trap_handlers", "TrapHandlerError", "Tenant", "GuestTrapError", "Guest", "GuestError",
           "Realm", "Model", "Completion", "Usage", "TextStream", "TokenLogprob", "ContextWindowError", "GenerationError",
           "ChatTemplate", "ChatTemplateError",
           "HostModel", "KVCache", "ForwardConfig", "UnsupportedModelError", "ContextFullError"]
__version__ = "0.1.0"
