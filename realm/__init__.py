"""realm: quantized LLMs from GGUF files in a WebAssembly sandbox, weights kept quantized in the host."""

from .quants import SUPPORTED_TYPES, GGMLType, QuantInfo, dequantize, quant_info

__all__ = ["GGMLType", "QuantInfo", "SUPPORTED_TYPES", "dequantize", "quant_info"]
__version__ = "0.1.0"
