"""Fuzz the host's import surface: the realm_* imports (realm/host.py, contracts in
guest/realm_abi.h) called from a wasm guest with hostile arguments.

    python tests/fuzz/fuzz_imports.py -max_total_time=600 -artifact_prefix=/tmp/f/ CORPUS_DIR

Each input is a program (imports_program.py) run by a fresh tenant: a tiny WAT module that
imports every realm_* function and re-exports it as call_<name>, instantiated with
`add_realm_imports(linker, store, shared=[tiny, ints], limits=Limits(...))` on a ModelStore
holding gguf_helpers.write_tiny_llama's model ("tiny", shared), a model with an I32 tensor
("ints", shared; UNSUPPORTED to the forward pass) and one the tenant may not see ("other").
Guest memory starts filled with known bytes.  After every call:

  * the result is one of the codes realm_abi.h lists for that import (INTERNAL never is), or
    a success the contract allows: only for models and KV caches this tenant may use, of the
    size the contract gives (bytes, values, rows x n_vocab...);
  * guest memory changed only inside the output buffer(s) that call names, and not at all
    when it failed; its size did not change;
  * what it wrote is right where that is cheap to know (header bytes, model info).

After the program the tenant closes: every byte it reserved is back in the store's HostBudget
and every model it stored is gone.  A crash of the process (the forward imports write guest
memory from C) is a finding too.

Coverage: realm's Python modules (host, store, forward, reader...) are instrumented by atheris;
the C forward pass and dequantizers are not.
"""

from __future__ import annotations

import logging
import os
import struct
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Finding  # noqa: E402

import atheris  # noqa: E402
import numpy as np  # noqa: E402

with atheris.instrument_imports(include=["realm"]):
    import realm  # noqa: F401
    from realm import abi
    from realm.batching import engine_stats
    from realm.cache import LayerCache
    from realm.forward import forward_config
    from realm.host import add_realm_imports
    from realm.limits import HostBudget, Limits, sandbox_engine
    from realm.quants import GGMLType
    from realm.reader import GGUFValueType as VT
    from realm.store import ModelStore

import wasmtime  # noqa: E402

from attackers import documented_codes, every_import_wat  # noqa: E402
from gguf_helpers import RawTensor, build_gguf, write_tiny_llama  # noqa: E402
import imports_program as P  # noqa: E402

LIMITS = Limits(memory_bytes=P.MAX_PAGES * P.PAGE, deadline_s=None, kv_bytes=4 << 20, kv_caches=3,
                stored_bytes=2 << 20, stored_models=2)
TRACE = os.environ.get("REALM_FUZZ_TRACE", "") not in ("", "0")  # print every program's calls


ALLOWED = documented_codes()  # this harness sets no deadline: DEADLINE is never right


class LastLog(logging.Handler):
    """Keeps the last host log record (an INTERNAL answer logs its traceback)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.text = ""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            self.text = logging.Formatter().format(record)


class Env:
    """What every program shares: the store and its models, the engine and the module."""

    def __init__(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="realm-fuzz-imports-")
        self.store = ModelStore(LayerCache(16 << 20), budget=HostBudget(64 << 20))
        tiny = self.store.load(write_tiny_llama(Path(self.tmp.name) / "tiny.gguf"))
        arch = [("general.architecture", VT.STRING, "llama")]
        ints = self.store.store_bytes(build_gguf(arch, [RawTensor("ids", (8,), GGMLType.I32, bytes(range(32)))])[0])
        other = self.store.store_bytes(build_gguf(arch, [RawTensor("w", (16,), GGMLType.F32, bytes(64))])[0])
        self.shared = {"tiny": tiny, "ints": ints, "other": other}
        self.models = len(self.store)
        self.engine = sandbox_engine()
        self.module = wasmtime.Module(self.engine, every_import_wat(P.PAGES))
        self.fill = np.random.default_rng(0).integers(0, 256, P.MAX_PAGES * P.PAGE, dtype=np.uint8).tobytes()
        self.log = LastLog()
        logger = logging.getLogger("realm")
        logger.addHandler(self.log)
        logger.propagate = False  # guest log lines and refusals stay out of the fuzzer's output
        logger.setLevel(logging.ERROR)
        logging.getLogger("realm.guest").setLevel(logging.CRITICAL + 1)


def check(ok: bool, what: str) -> None:
    if not ok:
        raise Finding(what)


def changed_outside(before: bytes, after: bytes, regions: list[tuple[int, int]]) -> list[int]:
    """Offsets (the first few) where memory changed outside every (start, length) region."""
    if before == after:
        return []
    diff = np.frombuffer(before, np.uint8) != np.frombuffer(after, np.uint8)
    for start, length in regions:
        diff[start:start + length] = False
    return np.flatnonzero(diff)[:8].tolist()


class Tenant:
    """One program's guest: a fresh RealmHost, wasm store and instance."""

    def __init__(self, env: Env):
        self.env = env
        linker = wasmtime.Linker(env.engine)
        self.host = add_realm_imports(linker, env.store, shared=[env.shared["tiny"], env.shared["ints"]],
                                      limits=LIMITS, threads=1)
        self.host.text_sink = lambda text: text == "stop"
        self.wasm = wasmtime.Store(env.engine)
        self.host.limit(self.wasm)
        exports = linker.instantiate(self.wasm, env.module).exports(self.wasm)
        self.memory = exports["memory"]
        self.grow_export = exports["grow"]
        self.calls = {name: exports[f"call_{name}"] for name in abi.IMPORTS}
        self.memory.write(self.wasm, env.fill[:self.size()], 0)
        self.state = P.State(self.size, env.shared, n_embd=256, n_vocab=64)
        self.visible = {env.shared["tiny"], env.shared["ints"]}  # model ids this guest may use
        self.kv_model: dict[int, int] = {}  # live KV cache id -> its model
        self.trace: list[str] = []

    def size(self) -> int:
        return self.memory.data_len(self.wasm)

    def snapshot(self) -> bytes:
        return bytes(self.memory.read(self.wasm, 0, self.size()))

    def put(self, ptr: int, data: bytes) -> None:
        """A guest's own store into its memory (nothing if it would not fit)."""
        if 0 <= ptr and ptr + len(data) <= self.size() and data:
            self.memory.write(self.wasm, data, ptr)

    # -- ops ------------------------------------------------------------------------------------
    def run(self, data: bytes) -> None:
        b = P.Bytes(data)
        try:
            for _ in range(P.MAX_OPS):
                op = P.OPS[b.byte() % len(P.OPS)]
                if op in P.IMPORT_ARGS:
                    args = [P.decode_arg(kind, self.state, b) for kind in P.IMPORT_ARGS[op]]
                    self.call(op, args)
                else:
                    getattr(self, op)(b)
        except P.End:
            pass

    def grow(self, b: P.Bytes) -> None:
        self.grow_export(self.wasm, b.byte() % 3)  # fails (-1) past Limits.memory_bytes

    def put_tokens(self, b: P.Bytes) -> None:
        ptr, n = P.decode_arg("ptr", self.state, b), b.byte() % 8 + 1
        tokens = []
        for _ in range(n):
            t = P.TOKEN_CHOICES[b.byte() % len(P.TOKEN_CHOICES)]
            tokens.append(b.u32() if t is None else t & 0xFFFF_FFFF)
        self.put(ptr, struct.pack(f"<{n}I", *tokens))

    def put_name(self, b: P.Bytes) -> None:
        ptr, name = P.decode_arg("ptr", self.state, b), P.NAMES[b.byte() % len(P.NAMES)]
        self.put(ptr, b.raw(b.byte() % 32) if name is None else name)

    def put_text(self, b: P.Bytes) -> None:
        ptr, text = P.decode_arg("ptr", self.state, b), P.TEXTS[b.byte() % len(P.TEXTS)]
        self.put(ptr, b.raw(b.byte() % 32) if text is None else text.encode())

    def put_model(self, b: P.Bytes) -> None:
        ptr, n = P.decode_arg("ptr", self.state, b), b.byte() % (len(P.KNOBS) + 1)
        model = P.mini_model(tuple(b.byte() for _ in range(n)))
        self.state.model_len = len(model)
        self.put(ptr, model)

    def patch(self, b: P.Bytes) -> None:
        ptr, n = P.decode_arg("ptr", self.state, b), b.byte() % 16 + 1
        self.put(ptr, b.raw(n))

    # -- one import call and its contract ----------------------------------------------------------
    def call(self, name: str, args: list[int]) -> None:
        sig = abi.IMPORTS[name]
        wasm_args = [((a & 0xFFFF_FFFF) ^ 0x8000_0000) - 0x8000_0000 if t == "i32"
                     else ((a & (2**64 - 1)) ^ 2**63) - 2**63 for a, t in zip(args, sig.params)]
        size, before = self.size(), self.snapshot()
        self.env.log.text = ""
        res = self.calls[name](self.wasm, *wasm_args)
        after = self.snapshot()
        self.trace.append(f"{name}{tuple(args)} -> {res}")
        where = f"{name}{tuple(args)} returned {res}"
        check(self.size() == size, f"{where}: the import changed the memory's size")
        u = [a & 0xFFFF_FFFF for a in wasm_args]  # how the host reads the i32 arguments
        if res < 0:
            check(res in ALLOWED[name], f"{where}: not a code realm_abi.h lists for it "
                  f"({abi.describe(res)}){' -- host log: ' + self.env.log.text if self.env.log.text else ''}")
            bad = changed_outside(before, after, [])
            check(not bad, f"{where}: a failing call wrote guest memory at {bad}")
            return
        regions = getattr(self, f"ok_{name[6:]}")(where, wasm_args, u, res, after)
        bad = changed_outside(before, after, regions)
        check(not bad, f"{where}: wrote guest memory at {bad}, outside {regions}")

    def _model_ok(self, where: str, model_id: int) -> None:
        check(model_id in self.visible, f"{where}: success for a model this guest may not use")

    def _forward_dims(self, model_id: int) -> tuple[int, int]:
        cfg = forward_config(self.env.store.get(model_id))  # the model ran: it has one
        return cfg.n_embd, cfg.n_vocab

    def ok_store_model(self, where, a, u, res, after):
        check(res > 0 and res not in self.visible and res not in self.env.shared.values(), f"{where}: a new id")
        self.state.stored.append(res)
        self.visible.add(res)
        return []

    def ok_get_tensor(self, where, a, u, res, after):
        self._model_ok(where, a[0])
        check(res > 0 and res % 4 == 0, f"{where}: a byte count of f32 values")
        if u[4] == 0:
            return []
        check(res <= u[4] and u[3] + res <= len(after), f"{where}: more than the buffer")
        return [(u[3], res)]

    def ok_get_model_info(self, where, a, u, res, after):
        self._model_ok(where, a[0])
        check(res == abi.OK, f"{where}: REALM_OK")
        info = self.env.store.info(a[0])
        check(struct.unpack_from("<Q", after, u[2])[0] == info.total_size, f"{where}: the total size")
        if u[1] + 4 <= u[2] or u[2] + 8 <= u[1]:
            check(struct.unpack_from("<I", after, u[1])[0] == info.tensor_count, f"{where}: the tensor count")
        return [(u[1], 4), (u[2], 8)]

    def ok_remove_model(self, where, a, u, res, after):
        check(res == abi.OK and a[0] in self.state.stored and a[0] in self.visible,
              f"{where}: removed a model this guest did not store")
        self.visible.discard(a[0])
        for kv in [k for k, m in self.kv_model.items() if m == a[0]]:
            del self.kv_model[kv]
        return []

    def ok_get_metadata(self, where, a, u, res, after):
        self._model_ok(where, a[0])
        header = self.env.store.get(a[0]).header
        check(res == len(header), f"{where}: the header has {len(header)} bytes")
        if u[2] == 0:
            return []
        check(after[u[1]:u[1] + res] == header, f"{where}: wrote something other than the header")
        return [(u[1], res)]

    def ok_log(self, where, a, u, res, after):
        check(res == abi.OK and u[0] <= 3 and u[2] <= abi.LOG_MAX, f"{where}: accepted")
        return []

    def ok_forward_embedding(self, where, a, u, res, after):
        self._model_ok(where, a[0])
        n_embd, _ = self._forward_dims(a[0])
        check(0 < u[2] <= abi.FORWARD_MAX_TOKENS and res == u[2] * n_embd, f"{where}: n_tokens x n_embd values")
        return [(u[3], 4 * res)]

    def ok_forward_layer(self, where, a, u, res, after):
        self._model_ok(where, a[0])
        n_embd, _ = self._forward_dims(a[0])
        check(self.kv_model.get(a[5]) == a[0], f"{where}: success with a KV cache that is not this model's")
        check(res == u[3] and res % n_embd == 0 and 0 < res // n_embd <= abi.FORWARD_MAX_TOKENS,
              f"{where}: hidden_len values")
        return [(u[6], 4 * res)]

    def ok_forward_lm_head(self, where, a, u, res, after):
        self._model_ok(where, a[0])
        n_embd, n_vocab = self._forward_dims(a[0])
        check(u[2] % n_embd == 0 and res == u[2] // n_embd * n_vocab, f"{where}: rows x n_vocab values")
        if u[4] == 0:
            return []
        check(res <= u[4], f"{where}: more than out_max_len")
        return [(u[3], 4 * res)]

    def ok_forward(self, where, a, u, res, after):
        self._model_ok(where, a[0])
        _, n_vocab = self._forward_dims(a[0])
        check(self.kv_model.get(a[4]) == a[0], f"{where}: success with a KV cache that is not this model's")
        check(0 < u[2] <= abi.FORWARD_MAX_TOKENS, f"{where}: n_tokens")
        check(res == (n_vocab if u[6] else 0) and res <= u[6], f"{where}: n_vocab values, or none without a buffer")
        return [(u[5], 4 * res)]

    def ok_kv_create(self, where, a, u, res, after):
        self._model_ok(where, a[0])
        check(res > 0 and res not in self.kv_model, f"{where}: a new KV cache id")
        self.kv_model[res] = a[0]
        self.state.kvs.append(res)
        return []

    def ok_kv_free(self, where, a, u, res, after):
        check(res == abi.OK and a[0] in self.kv_model, f"{where}: freed a KV cache that is not this guest's")
        del self.kv_model[a[0]]
        return []

    def ok_kv_truncate(self, where, a, u, res, after):
        check(a[0] in self.kv_model and 0 <= res <= u[1], f"{where}: positions kept")
        return []

    def ok_emit_text(self, where, a, u, res, after):
        check(res in (abi.OK, abi.EMIT_STOP) and u[1] <= abi.TEXT_MAX, f"{where}: OK or EMIT_STOP")
        return []

    def close(self) -> None:
        self.host.close()
        store = self.env.store
        cached = sum(e["prefix_bytes"] for e in engine_stats(store).values())  # the prefix caches' entries
        check(store.budget.used == cached, f"the closed tenant left {store.budget.used - cached} bytes reserved in the budget")
        check(len(store) == self.env.models, f"the closed tenant left {len(store) - self.env.models} models stored")


env: Env | None = None


def test_one_input(data: bytes) -> None:
    global env
    if env is None:
        env = Env()
    tenant = Tenant(env)
    try:
        tenant.run(data)
    except Finding as exc:
        tenant.host.close()
        raise Finding(f"{exc}\nthe program's last calls:\n  " + "\n  ".join(tenant.trace[-12:])) from None
    finally:
        if TRACE:
            print("program:\n  " + "\n  ".join(tenant.trace), file=sys.stderr)
    tenant.close()


def main(argv: list[str]) -> None:
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
