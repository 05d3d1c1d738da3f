/* Dequantization entry points: the threaded driver that picks a path for the
 * running CPU and takes that path's row dequantizer from the type's row of
 * the table of formats (traits.h; the rows themselves are in kernels.h). */
#ifndef REALM_DEQUANT_H
#define REALM_DEQUANT_H

#include "traits.h"

/* Instruction-set paths.  REALM_ISA_AUTO picks the best one the CPU has. */
enum realm_isa { REALM_ISA_AUTO = 0, REALM_ISA_SCALAR = 1, REALM_ISA_AVX2 = 2, REALM_ISA_NEON = 3 };

/* Error codes of the driver (negative, like the ABI's). */
#define REALM_EUNSUPPORTED (-1) /* no kernel for this type */
#define REALM_ENOISA (-2)       /* the requested path is not available on this CPU */

/* The best path this CPU supports (never REALM_ISA_AUTO; asked of the CPU once). */
int realm_best_isa(void);
const char *realm_isa_name(int isa);

/* The path a caller's isa argument means: REALM_ISA_AUTO -> the best one;
 * scalar or the best one as given; anything else REALM_ENOISA. */
int realm_resolve_isa(int isa);

/* Accepted threads per core (realm/threads.py's THREADS_PER_CORE_MAX): more only slows
 * the kernels, a few times the cores is allowed to test thread-count invariance. */
#define REALM_THREADS_PER_CORE_MAX 4
/* The largest team realm runs: REALM_THREADS_PER_CORE_MAX x the cores (1 without OpenMP). */
int realm_max_threads(void);

/* Threads a caller's nthreads means: <= 0 -> every core, else at most realm_max_threads(). */
int realm_resolve_threads(int nthreads);

/* Dequantize nblocks blocks of `type` from src to dst on up to nthreads
 * threads (<= 0: all cores).  Small inputs stay on the calling thread.
 * Returns 0, or REALM_EUNSUPPORTED / REALM_ENOISA.  Safe to call without the GIL. */
int realm_dequantize(int type, const void *src, int64_t nblocks, float *dst, int nthreads, int isa);

/* Outputs of realm_dequantize at least this large are written with streaming (non-temporal)
 * stores on the AVX2 path where the format has such a row (traits.h: to_float_stream; F32,
 * F16, BF16): an output this large does not stay in cache anyway, and plain stores first read
 * each line they write.  Measured at 64 MiB, 2 threads: F32 (a copy) 4,600 -> 6,700 Melem/s;
 * F16 1.2-1.5x on one thread, 1.08-1.15x on two (benchmarks/dequant.py).  (The decoded formats,
 * decoded into an L1 buffer and streamed out from it, were slower than with plain stores:
 * 0.5-0.8x.) */
#define REALM_STREAM_MIN_BYTES ((int64_t)32 << 20)

/* Shared scale unpackers of the K-quants (used by the SIMD paths too). */
void realm_q3_K_scales(const uint8_t packed[12], int8_t out[16]);
void realm_k4_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m);

#endif
