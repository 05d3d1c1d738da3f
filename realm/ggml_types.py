"""GGML tensor types as numbered in GGUF files, and resolving a caller's way of naming one.

Pure Python with no imports from realm's native extension, so that both the extension
(realm._native) and realm.quants, which reads the extension's table of formats, can import it."""

from __future__ import annotations

import enum
from typing import Any

import numpy as np

from .errors import ArgumentTypeError, InvalidArgumentError


class GGMLType(enum.IntEnum):
    """Tensor types as numbered in GGUF files (ggml's `ggml_type`)."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35
    MXFP4 = 39


def as_qtype(qtype: Any) -> GGMLType:
    """Resolve a `GGMLType`, `gguf.GGMLQuantizationType`, int value or name (any case)."""
    if isinstance(qtype, str):
        try:
            return GGMLType[qtype.strip().upper()]
        except KeyError:
            raise InvalidArgumentError(f"unknown GGML type name {qtype!r}") from None
    if isinstance(qtype, bool) or not isinstance(qtype, (int, np.integer)):
        raise ArgumentTypeError(f"qtype must be a GGMLType, an int or a name, not {type(qtype).__name__}")
    try:
        return GGMLType(int(qtype))
    except ValueError:
        raise InvalidArgumentError(f"unknown GGML type id {int(qtype)}") from None
