"""guest/realm_abi.h is the ABI's single source of truth: realm/abi.py, the host's
imports and the built guest.wasm must all agree with it."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
import wasmtime

from realm import abi
from realm.guest import guest_wasm_path
from realm.host import RealmHost
from realm.store import ModelStore

HEADER = Path(__file__).resolve().parents[1] / "guest" / "realm_abi.h"

# C types of the header -> wasm value types (wasm32: pointers are i32)
C_TO_WASM = {"int32_t": "i32", "uint32_t": "i32", "int64_t": "i64", "uint64_t": "i64",
             "float": "f32", "double": "f64"}
C_TO_STRUCT = {"int32_t": "i", "uint32_t": "I", "int64_t": "q", "uint64_t": "Q", "float": "f",
               "char": "s"}


def _source() -> str:
    text = HEADER.read_text()
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


def _wasm_type(c_decl: str) -> str:
    """'const char *name' -> 'i32'; 'int64_t model_id' -> 'i64'; a return type alone too."""
    if "*" in c_decl:
        return "i32"
    words = c_decl.replace("const", " ").split()
    assert words and words[0] in C_TO_WASM, f"unknown C type in {c_decl!r}"
    return C_TO_WASM[words[0]]


def _functions(kind: str) -> dict[str, abi.Signature]:
    pattern = re.compile(kind + r"\(\s*([^,]+?)\s*,\s*(\w+)\s*,\s*\(([^()]*)\)\s*\)\s*;", re.S)
    found = {}
    for ret, name, params in pattern.findall(_source()):
        assert name not in found, f"{name} declared twice"
        params = params.strip()
        plist = [] if params in ("", "void") else [p.strip() for p in params.split(",")]
        results = () if ret.strip() == "void" else (_wasm_type(ret),)
        found[name] = abi.Signature(tuple(_wasm_type(p) for p in plist), results)
    assert found, f"no {kind} lines found"
    return found


def _constants() -> dict[str, int]:
    pattern = re.compile(r"^\s*#define\s+(REALM_\w+)\s+\(?\s*(-?\d+)\s*\)?\s*$", re.M)
    return {name: int(value) for name, value in pattern.findall(_source())}


def _config_fields(struct_name: str = "realm_config") -> list[tuple[str, str]]:
    body = re.search(r"struct\s+" + struct_name + r"\s*\{(.*?)\};", _source(), re.S).group(1)
    fields = []
    for decl in filter(None, (d.strip() for d in body.split(";"))):
        m = re.fullmatch(r"(\w+)\s+(\w+)\s*(?:\[(\d+)\])?", decl)
        assert m, f"unparsable field {decl!r}"
        ctype, name, count = m.groups()
        fmt = C_TO_STRUCT[ctype]
        fields.append((name, f"{count}{fmt}" if count else fmt))
    return fields


def _valtype_name(t: wasmtime.ValType) -> str:
    return str(t)


def test_constants_match():
    expected = {"REALM_ABI_VERSION": abi.ABI_VERSION, "REALM_OK": abi.OK,
                "REALM_NAME_MAX": abi.NAME_MAX, "REALM_LOG_MAX": abi.LOG_MAX,
                "REALM_LOG_CALLS_MAX": abi.LOG_CALLS_MAX,
                "REALM_CONFIG_SIZE": abi.CONFIG_SIZE}
    expected |= {f"REALM_E_{e.name}": int(e) for e in abi.Err}
    expected |= {f"REALM_LOG_{lv.name}": int(lv) for lv in abi.LogLevel}
    expected |= {f"REALM_TOKENIZER_{t.name}": int(t) for t in abi.Tokenizer}
    expected |= {f"REALM_STOP_{s.name}": int(s) for s in abi.StopReason}
    expected |= {f"REALM_{name}": getattr(abi, name) for name in (
        "TEXT_MAX", "EMIT_STOP", "TOKENIZE_ADD_SPECIAL", "TOKENIZE_PARSE_SPECIAL", "GENERATE_IGNORE_EOG",
        "DETOKENIZE_SPECIAL", "STOP_STRINGS_MAX", "STOP_STRING_MAX", "BATCH_DEFAULT", "FORWARD_MAX_TOKENS",
        "GENERATE_PARAMS_SIZE", "GENERATE_RESULT_SIZE")}
    assert _constants() == expected


def test_error_codes_are_distinct_and_negative():
    codes = [v for k, v in _constants().items() if k.startswith("REALM_E_")]
    assert len(set(codes)) == len(codes) and all(c < 0 for c in codes)
    assert set(abi.ERROR_TEXT) == set(abi.Err)


def test_imports_match():
    assert _functions("REALM_IMPORT") == dict(abi.IMPORTS)


def test_exports_match():
    assert _functions("REALM_EXPORT") == dict(abi.EXPORTS)


def test_config_struct_matches():
    fields = _config_fields()
    assert fields == list(abi.CONFIG_LAYOUT)
    assert struct.calcsize("<" + "".join(f for _, f in fields)) == _constants()["REALM_CONFIG_SIZE"]


@pytest.mark.parametrize("name,layout", [("realm_generate_params", abi.GENERATE_PARAMS_LAYOUT),
                                         ("realm_generate_result", abi.GENERATE_RESULT_LAYOUT)])
def test_generate_structs_match(name, layout):
    fields = _config_fields(name)
    assert fields == list(layout)
    size = _constants()[f"REALM_{name[6:].upper()}_SIZE"]
    assert struct.calcsize("<" + "".join(f for _, f in fields)) == size


def _module() -> tuple[wasmtime.Engine, wasmtime.Module]:
    engine = wasmtime.Engine()
    return engine, wasmtime.Module.from_file(engine, str(guest_wasm_path()))


def _sig_of(ty: wasmtime.FuncType) -> abi.Signature:
    return abi.Signature(tuple(map(_valtype_name, ty.params)), tuple(map(_valtype_name, ty.results)))


def test_guest_imports_only_realm_functions():
    """No WASI, no filesystem, no network: only env.realm_* imports, as the header declares them."""
    _, module = _module()
    header = _functions("REALM_IMPORT")
    for imp in module.imports:
        assert imp.module == abi.IMPORT_MODULE, f"guest imports {imp.module}.{imp.name}"
        assert imp.name in header, f"guest imports {imp.name}, which realm_abi.h does not declare"
        assert isinstance(imp.type, wasmtime.FuncType)
        assert _sig_of(imp.type) == header[imp.name], imp.name


def test_guest_exports_match_header():
    _, module = _module()
    exports = {e.name: e.type for e in module.exports}
    assert set(exports) == set(_functions("REALM_EXPORT")) | {"memory", "_initialize"}
    for name, sig in _functions("REALM_EXPORT").items():
        assert _sig_of(exports[name]) == sig, name
    assert isinstance(exports["memory"], wasmtime.MemoryType)


def _wat_importing(imports: dict[str, abi.Signature]) -> str:
    lines = ["(module"]
    for name, sig in imports.items():
        params = " ".join(sig.params)
        results = " ".join(sig.results)
        lines.append(f'  (import "env" "{name}" (func (param {params}) (result {results})))')
    lines.append(")")
    return "\n".join(lines)


def test_host_defines_every_header_import_with_its_signature():
    """A module importing exactly the header's functions links against RealmHost;
    one with any signature changed does not."""
    engine = wasmtime.Engine()
    header = _functions("REALM_IMPORT")
    linker = wasmtime.Linker(engine)
    RealmHost(ModelStore()).define(linker)
    linker.instantiate(wasmtime.Store(engine), wasmtime.Module(engine, _wat_importing(header)))

    name, sig = next(iter(header.items()))
    wrong = dict(header)
    wrong[name] = abi.Signature(sig.params + ("i32",), sig.results)
    with pytest.raises(wasmtime.WasmtimeError):
        linker.instantiate(wasmtime.Store(engine), wasmtime.Module(engine, _wat_importing(wrong)))
