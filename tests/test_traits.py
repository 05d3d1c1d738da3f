"""The table of formats (csrc/traits.c): every dispatch on a type reads one row, so the
rows must hold together, and a type whose row has no dot kernel is refused by the
matrix products in C (REALM_EUNSUPPORTED), never computed as another format."""

import numpy as np
import pytest

import realm
from realm import GGMLType, _native, dequantize

T = GGMLType
ROWS = _native.formats()
ISAS = sorted({"scalar", _native.best_isa()})
BLOCK_ACT = {"f32": 1, "f16": 1, "bf16": 1, "q8": 32, "q8_k": 256}


def test_rows_name_their_ggml_types():
    assert {T(t).name for t in ROWS} == {r["name"] for r in ROWS.values()}
    for t, row in ROWS.items():
        assert row["name"] == T(t).name
        assert _native.type_traits(t) == (row["name"], row["block_size"], row["type_size"], row["align"])


@pytest.mark.parametrize("t", sorted(ROWS), ids=lambda t: T(t).name)
def test_row_is_consistent(t):
    row = ROWS[t]
    assert row["to_float"]["ref"], "every row dequantizes on the scalar path"
    dot = row["dot"]
    if row["act"] is None:
        assert not any(any(k) for k in dot.values()), "a row without an act names no dot kernel"
        assert not row["repacked"]
        return
    assert row["act"] in BLOCK_ACT
    assert row["block_size"] % BLOCK_ACT[row["act"]] == 0, "whole activation blocks per weight block"
    assert dot["ref"][0], "a row with an act has a scalar dot kernel"
    if row["repacked"]:
        assert dot["ref"][1], "a repacked row has a scalar whole-block kernel"
    for path, (vec, whole) in dot.items():
        assert not whole or row["repacked"], f"{path}: whole-block kernels only for repacked rows"
        assert not whole or vec, f"{path}: a whole-block kernel beside no vec_dot kernel"
        if path in ("vnni", "avx512") and (vec or whole):
            assert dot["avx2"][0], f"an {path} kernel has its plain AVX2 twin"
            assert dot["avx2"][1] == whole


def test_simd_rows_exist_on_this_cpu():
    """The build names the SIMD kernels of the machine's path (F32's row is a copy)."""
    best = _native.best_isa()
    if best == "scalar":
        pytest.skip("no SIMD path on this CPU")
    for t, row in ROWS.items():
        if t != T.F32:
            assert row["to_float"][best], T(t).name
        if best == "avx2" and row["act"] is not None:
            assert row["dot"]["avx2"][0], T(t).name


def test_float_weights_take_llama_cpps_vec_dot_types():
    """llama.cpp rounds the activations to the weight's vec_dot_type: f16 for F16, bf16 for BF16."""
    assert [ROWS[t]["act"] for t in (T.F32, T.F16, T.BF16)] == ["f32", "f16", "bf16"]


def test_matmul_acts_follow_the_table():
    for t, row in ROWS.items():
        if row["act"] is None:
            with pytest.raises(ValueError, match="no matmul kernel"):
                _native.act_type(t)
        else:
            assert _native.act_type(t) == row["act"]


@pytest.mark.parametrize("isa", ISAS)
def test_type_without_dot_kernel_is_refused_in_c(isa):
    """Q8_K has a to_float row but no dot kernel: realm_matmul itself (no Python check in
    front) answers EUNSUPPORTED, as it does for type ids with no row at all."""
    no_dot = [t for t, row in ROWS.items() if row["act"] is None]
    assert T.Q8_K in no_dot
    for t in no_dot:
        assert ROWS[t]["to_float"]["ref"]
        for n_out in (1, 8):  # 8: where a repacked format would take its whole-block kernel
            assert _native.matmul_rc(int(t), n_out, 256, 1, isa) == _native.EUNSUPPORTED
        # the row still dequantizes
        assert dequantize(np.zeros(ROWS[t]["type_size"], dtype=np.uint8), t).shape == (ROWS[t]["block_size"],)
    for t in (int(T.Q8_1), 5, 40, -1, 10_000):  # 40: NVFP4, no row
        assert _native.matmul_rc(t, 1, 256, 1, isa) == _native.EUNSUPPORTED


@pytest.mark.parametrize("isa", ISAS)
def test_every_dot_row_runs_in_c(isa):
    """Zero weights times zero activations through realm_matmul for each row with a dot
    kernel: 0, and y all zeros is the C path (not refused)."""
    for t, row in ROWS.items():
        if row["act"] is not None:
            for n_out in (1, 8):
                assert _native.matmul_rc(t, n_out, 256, 3, isa) == 0, T(t).name


def test_forward_types_are_the_rows_with_dot_kernels():
    """realm.FORWARD_TYPES: the types the matrix products take, each a dequantizable type; every
    other supported type is refused by them (Q8_K, the K-quants' activations)."""
    forward = set(realm.FORWARD_TYPES)
    assert forward <= set(realm.SUPPORTED_TYPES)
    assert forward == set(realm.SUPPORTED_TYPES) - {T.Q8_K}
    for t in realm.SUPPORTED_TYPES:
        if t in forward:
            assert _native.act_type(t) in BLOCK_ACT
        else:
            with pytest.raises(ValueError, match="no matmul kernel"):
                _native.act_type(t)
