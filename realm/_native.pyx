# cython: language_level=3, boundscheck=False, wraparound=False
"""realm's native extension: every C kernel of csrc/, compiled once into this one module
(one table of formats, one cached choice of instruction set per process), and its Python
wrappers, which check their arguments and run the C code without the GIL:

  _quant.pxi    dequantize and the table of formats (csrc/dequant*.c, csrc/traits.c),
                the GGUF reader's walk over strings
  _compute.pxi  quantized matrix products and the transformer ops (csrc/matmul*.c,
                csrc/q8.c, csrc/ops*.c)
  _forward.pxi  the forward pass (csrc/forward.c)
  _ticker.pxi   the epoch ticker of the sandbox's CPU deadlines (csrc/ticker.c)
  _signals.pxi  Wasmtime's trap signal handlers, checked and restored (csrc/trap_signals.c)
  _imports.pxi  the C trampoline of realm's Wasmtime imports (realm/host.py)

It imports nothing of realm's but pure-Python modules (errors, threads, ggml_types), so
realm.quants can import it without a cycle."""

include "_quant.pxi"
include "_compute.pxi"
include "_forward.pxi"
include "_ticker.pxi"
include "_signals.pxi"
include "_imports.pxi"
