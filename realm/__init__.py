"""realm: quantized LLMs from GGUF files in a WebAssembly sandbox, weights kept quantized in the host."""

from .quants import SUPPORTED_TYPES, GGMLType, QuantInfo, dequantize, quant_info
from .errors import GGUFError, ModelNotFoundError, RealmError, TensorNotFoundError
from .reader import GGUFFile, open_gguf
from .cache import LayerCache
from .store import ModelStore, QuantizedTensor, StoredModel
from .chat import ChatTemplate, ChatTemplateError
from .forward import ContextFullError, ForwardConfig, HostModel, KVCache, UnsupportedModelError
from .runtime import Completion, ContextWindowError, GenerationError, Model, Realm, TextStream, Usage

__all__ = ["GGMLType", "QuantInfo", "SUPPORTED_TYPES", "dequantize", "quant_info",
           "RealmError", "GGUFError", "ModelNotFoundError", "TensorNotFoundError",
           "GGUFFile", "open_gguf", "LayerCache", "ModelStore", "QuantizedTensor", "StoredModel",
           "Realm", "Model", "Completion", "Usage", "TextStream", "ContextWindowError", "GenerationError",
           "ChatTemplate", "ChatTemplateError",
           "HostModel", "KVCache", "ForwardConfig", "UnsupportedModelError", "ContextFullError"]
__version__ = "0.1.0"
