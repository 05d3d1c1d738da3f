/* The guest's GGUF header parser (guest/gguf_meta.c, guest/model_config.c) as a
 * shared library for tests/fuzz/fuzz_guest_parser.py, which calls check() through
 * ctypes for every input atheris makes.
 *
 * check() copies the input into a buffer of exactly its size -- malloc'ed, so
 * that AddressSanitizer (when the library is built and run with it) catches a
 * read one byte past the end -- or, with guard != 0, into the last bytes of an
 * mmap'ed page followed by an inaccessible page, which catches reads past the end
 * without ASan.  Then it parses, builds the config, finds every key and tensor
 * again by name and reads every key through each typed getter; any broken
 * invariant aborts (a finding).  Returns the REALM_E_* code of the parse (or of
 * the config when the parse succeeded).
 *
 * Coverage: the guest sources may be compiled with clang's
 * -fsanitize-coverage=inline-8bit-counters,pc-table,trace-cmp (or gcc's
 * -fsanitize-coverage=trace-pc, see FUZZ_TRACE_PC below).  Their callbacks
 * (__sanitizer_cov_*) bind to the hidden definitions in this file, which this
 * file -- compiled without instrumentation -- forwards to the libFuzzer inside
 * atheris once fuzz_register() has found it.  Binding them here rather than
 * globally matters under a preloaded ASan runtime, whose weak no-op versions of
 * these callbacks would otherwise win over atheris's. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "gguf_meta.h"
#include "model_config.h"

#define HIDDEN __attribute__((visibility("hidden")))
#define EXPORT __attribute__((visibility("default")))

/* ---- the check ---------------------------------------------------------------- */

static void require(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "guest_parser_shim: broken invariant: %s\n", what);
        fflush(stderr);
        abort();
    }
}

static int getter_ok(int rc) { return rc == 0 || rc == 1 || rc == REALM_E_BAD_GGUF; }

static int check_buffer(const uint8_t *data, uint32_t len)
{
    struct gguf_file f;
    struct realm_config c;
    int rc = gguf_parse(&f, data, len);
    if (rc) {
        require(rc == REALM_E_BAD_GGUF || rc == REALM_E_NO_MEMORY, "gguf_parse returns 0, BAD_GGUF or NO_MEMORY");
        require(gguf_error() != NULL && strlen(gguf_error()) > 0, "a failed parse says why");
        return rc;
    }
    require(f.data == data && f.len <= len && f.data_offset == f.len, "the header lies in the input");
    require(f.alignment && !(f.alignment & (f.alignment - 1)), "the alignment is a power of two");
    char *key = malloc((size_t)f.len + 1);
    require(key != NULL, "malloc");
    for (uint32_t i = 0; i < f.n_kv; i++) {  /* every name must be found again, at its own index */
        const struct gguf_kv *kv = &f.kv[i];
        require((uint64_t)kv->name.off + kv->name.len <= f.len && kv->val <= f.len, "a key lies in the header");
        require(kv->type < GGUF_TYPE_COUNT, "a key has a known type");
        require(gguf_find_kv(&f, (const char *)f.data + kv->name.off, kv->name.len) == kv, "every key is found");
        /* every typed getter on every key (NUL-terminated copies; a name with a NUL finds another or none) */
        memcpy(key, f.data + kv->name.off, kv->name.len);
        key[kv->name.len] = 0;
        uint32_t u32;
        float f32;
        int32_t b;
        struct gguf_str s;
        uint64_t n;
        require(getter_ok(gguf_get_u32(&f, key, &u32)) && getter_ok(gguf_get_f32(&f, key, &f32)) &&
                getter_ok(gguf_get_bool(&f, key, &b)), "scalar getters answer 0, 1 or BAD_GGUF");
        int src = gguf_get_str(&f, key, &s);
        require(getter_ok(src), "gguf_get_str answers 0, 1 or BAD_GGUF");
        if (src == 1) require((uint64_t)s.off + s.len <= f.len, "a string value lies in the header");
        for (uint32_t t = 0; t < GGUF_TYPE_COUNT; t++)
            require(getter_ok(gguf_get_array_len(&f, key, t, &n)), "gguf_get_array_len answers 0, 1 or BAD_GGUF");
    }
    free(key);
    for (uint32_t i = 0; i < f.n_tensors; i++) {
        const struct gguf_tensor *t = &f.tensors[i];
        require((uint64_t)t->name.off + t->name.len <= f.len, "a tensor name lies in the header");
        require(t->n_dims >= 1 && t->n_dims <= GGUF_MAX_DIMS && t->offset % f.alignment == 0, "tensor info");
        require(gguf_find_tensor(&f, (const char *)f.data + t->name.off, t->name.len) == t, "every tensor is found");
    }
    rc = config_from_gguf(&c, &f);
    require(rc == 0 || rc == REALM_E_BAD_GGUF, "config_from_gguf returns 0 or BAD_GGUF");
    if (rc == 0) require(memchr(c.architecture, 0, sizeof c.architecture) != NULL, "the architecture is a C string");
    gguf_free(&f);
    return rc;
}

EXPORT int check(const uint8_t *data, uint32_t len, int guard)
{
    if (!guard) {
        uint8_t *buf = malloc(len ? len : 1);
        require(buf != NULL, "malloc");
        memcpy(buf, data, len);
        int rc = check_buffer(buf, len);
        free(buf);
        return rc;
    }
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t span = ((size_t)len + page - 1) / page * page;
    uint8_t *map = mmap(NULL, span + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    require(map != MAP_FAILED, "mmap");
    require(mprotect(map + span, page, PROT_NONE) == 0, "mprotect");
    uint8_t *buf = map + span - len;  /* the input ends where the inaccessible page starts */
    memcpy(buf, data, len);
    int rc = check_buffer(buf, len);
    munmap(map, span + page);
    return rc;
}

/* ---- coverage: sanitizer-coverage callbacks forwarded to atheris's libFuzzer ----------- */

typedef void (*counters_init_fn)(uint8_t *, uint8_t *);
typedef void (*pcs_init_fn)(const uintptr_t *, const uintptr_t *);
typedef void (*cmp1_fn)(uint8_t, uint8_t);
typedef void (*cmp2_fn)(uint16_t, uint16_t);
typedef void (*cmp4_fn)(uint32_t, uint32_t);
typedef void (*cmp8_fn)(uint64_t, uint64_t);
typedef void (*switch_fn)(uint64_t, uint64_t *);

static void nop1(uint8_t a, uint8_t b) { (void)a, (void)b; }
static void nop2(uint16_t a, uint16_t b) { (void)a, (void)b; }
static void nop4(uint32_t a, uint32_t b) { (void)a, (void)b; }
static void nop8(uint64_t a, uint64_t b) { (void)a, (void)b; }
static void nop_switch(uint64_t v, uint64_t *cases) { (void)v, (void)cases; }

static cmp1_fn cmp1 = nop1, const_cmp1 = nop1;
static cmp2_fn cmp2 = nop2, const_cmp2 = nop2;
static cmp4_fn cmp4 = nop4, const_cmp4 = nop4;
static cmp8_fn cmp8 = nop8, const_cmp8 = nop8;
static switch_fn trace_switch = nop_switch;

static uint8_t *counters_start, *counters_stop;
static const uintptr_t *pcs_start, *pcs_stop;

/* Called by the instrumented code's module constructor, at dlopen. */
HIDDEN void __sanitizer_cov_8bit_counters_init(uint8_t *start, uint8_t *stop)
{
    if (!counters_start) counters_start = start, counters_stop = stop;
}

HIDDEN void __sanitizer_cov_pcs_init(const uintptr_t *start, const uintptr_t *stop)
{
    if (!pcs_start) pcs_start = start, pcs_stop = stop;
}

/* Tail calls (at -O1 and above), so libFuzzer sees the instrumented caller's return address. */
HIDDEN void __sanitizer_cov_trace_cmp1(uint8_t a, uint8_t b) { cmp1(a, b); }
HIDDEN void __sanitizer_cov_trace_cmp2(uint16_t a, uint16_t b) { cmp2(a, b); }
HIDDEN void __sanitizer_cov_trace_cmp4(uint32_t a, uint32_t b) { cmp4(a, b); }
HIDDEN void __sanitizer_cov_trace_cmp8(uint64_t a, uint64_t b) { cmp8(a, b); }
HIDDEN void __sanitizer_cov_trace_const_cmp1(uint8_t a, uint8_t b) { const_cmp1(a, b); }
HIDDEN void __sanitizer_cov_trace_const_cmp2(uint16_t a, uint16_t b) { const_cmp2(a, b); }
HIDDEN void __sanitizer_cov_trace_const_cmp4(uint32_t a, uint32_t b) { const_cmp4(a, b); }
HIDDEN void __sanitizer_cov_trace_const_cmp8(uint64_t a, uint64_t b) { const_cmp8(a, b); }
HIDDEN void __sanitizer_cov_trace_switch(uint64_t v, uint64_t *cases) { trace_switch(v, cases); }
/* gcc's trace-cmp also traces float comparisons; libFuzzer has no use for them */
HIDDEN void __sanitizer_cov_trace_cmpf(float a, float b) { (void)a, (void)b; }
HIDDEN void __sanitizer_cov_trace_cmpd(double a, double b) { (void)a, (void)b; }

/* gcc has no inline 8-bit counters: with -fsanitize-coverage=trace-pc it calls this at
 * every basic block, and a hash of the block's address picks one of our own counters. */
#define TRACE_PC_COUNTERS (1u << 16)
static uint8_t trace_pc_counters[TRACE_PC_COUNTERS];

HIDDEN void __sanitizer_cov_trace_pc(void)
{
    uintptr_t pc = (uintptr_t)__builtin_return_address(0);
    uint8_t *c = &trace_pc_counters[(pc ^ (pc >> 16)) & (TRACE_PC_COUNTERS - 1)];
    if (*c != 0xFF) ++*c;
}

/* The kind of coverage this library reports: 2 inline counters, 1 trace-pc, 0 none. */
EXPORT int coverage_kind(void)
{
#ifdef FUZZ_TRACE_PC
    return 1;
#else
    return counters_start ? 2 : 0;
#endif
}

/* Hand the coverage to the libFuzzer in the shared object at `libfuzzer` (atheris's core;
 * NULL: the process's global scope).  Returns the number of counters registered, or -1. */
EXPORT long fuzz_register(const char *libfuzzer)
{
    void *h = libfuzzer ? dlopen(libfuzzer, RTLD_NOW | RTLD_NOLOAD) : RTLD_DEFAULT;
    if (!h) return -1;
    counters_init_fn counters_init = (counters_init_fn)dlsym(h, "__sanitizer_cov_8bit_counters_init");
    pcs_init_fn pcs_init = (pcs_init_fn)dlsym(h, "__sanitizer_cov_pcs_init");
    if (!counters_init) return -1;
#define LOOKUP(var, name) do { void *p = dlsym(h, name); if (p) var = p; } while (0)
    LOOKUP(cmp1, "__sanitizer_cov_trace_cmp1");
    LOOKUP(cmp2, "__sanitizer_cov_trace_cmp2");
    LOOKUP(cmp4, "__sanitizer_cov_trace_cmp4");
    LOOKUP(cmp8, "__sanitizer_cov_trace_cmp8");
    LOOKUP(const_cmp1, "__sanitizer_cov_trace_const_cmp1");
    LOOKUP(const_cmp2, "__sanitizer_cov_trace_const_cmp2");
    LOOKUP(const_cmp4, "__sanitizer_cov_trace_const_cmp4");
    LOOKUP(const_cmp8, "__sanitizer_cov_trace_const_cmp8");
    LOOKUP(trace_switch, "__sanitizer_cov_trace_switch");
#undef LOOKUP
#ifdef FUZZ_TRACE_PC
    counters_init(trace_pc_counters, trace_pc_counters + TRACE_PC_COUNTERS);
    return TRACE_PC_COUNTERS;
#else
    if (!counters_start) return 0;
    counters_init(counters_start, counters_stop);
    if (pcs_start && pcs_init) pcs_init(pcs_start, pcs_stop);
    return (long)(counters_stop - counters_start);
#endif
}
