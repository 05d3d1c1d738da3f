/* Matrix products: argument checks, the choice of path, and the split of
 * the work into tiles of weight rows shared out by OpenMP.
 *
 * A tile is a run of weight rows.  Its thread walks the token groups
 * (REALM_TOK_GROUP activation rows each) and, for each group, every row of
 * the tile, so the tile's weights stay in L2 while each group's activations
 * sit in L1 and a decoded weight block serves a whole group.  Each output
 * value is computed by one kernel call whatever the split, so results do not
 * depend on the thread count.  Where a format has a several-rows kernel for
 * the path (rows_vnni, traits.h) a tile's rows go to it in one call, tiles
 * then a multiple of 8 rows; it gives each row the row kernel's floats.  From
 * its wide_min tokens on, a format's wide kernel (wide_vnni) takes a tile's
 * rows 16 at a time with every token (tiles a multiple of 16 rows), again the
 * row kernel's floats. */
#include "matmul.h"

#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* Below this many multiply-adds a second thread costs more than it saves. */
#define MIN_PARALLEL_MACS (1 << 16)
/* Weight bytes per tile when token groups reuse it (kept well inside L2). */
#define TILE_BYTES (64 * 1024)

int realm_act_type(int wtype) {
    const realm_type_traits *tt = realm_get_traits(wtype);
    if (!tt || tt->act == REALM_ACT_NONE || !tt->dot_ref[0]) return REALM_EUNSUPPORTED;
    return tt->act;
}

/* llama.cpp's CPU backend (x86, AVX-512 build) repacks Q4_0, Q4_K, Q2_K, IQ4_NL and MXFP4
 * matrices of 8k rows (the rows marked `repacked`) into interleaved blocks
 * whose kernels sum each block whole; the other matrices go through its
 * vec_dot kernels. */
int realm_whole_blocks(int wtype, int64_t n_out) {
    const realm_type_traits *tt = realm_get_traits(wtype);
    return tt && tt->repacked && n_out % 8 == 0;
}

/* Sizes beyond this are refused before any product can overflow int64. */
#define MAX_DIM ((int64_t)1 << 40)

static int check_act(int act, int64_t n_tok, int64_t n_in) {
    if (act < REALM_ACT_F32 || act >= REALM_ACT_COUNT) return REALM_EUNSUPPORTED;
    if (n_tok < 0 || n_in <= 0 || n_tok > MAX_DIM || n_in > MAX_DIM || n_tok * (n_in / 16 + 1) > MAX_DIM)
        return REALM_EINVAL;
    const int64_t k = act == REALM_ACT_Q8 ? 32 : act == REALM_ACT_Q8_K ? QK_K : 1;
    return n_in % k ? REALM_EINVAL : 0;
}

int64_t realm_act_size(int act, int64_t n_tok, int64_t n_in) {
    const int rc = check_act(act, n_tok, n_in);
    return rc ? rc : realm_act_layout_of(act, n_tok, n_in).total;
}

int realm_quantize_act_ws(int act, const float *x, int64_t n_tok, int64_t n_in, void *buf, int isa) {
    int rc = check_act(act, n_tok, n_in);
    if (rc) return rc;
    if ((isa = realm_resolve_isa(isa)) < 0) return isa;
    if (act == REALM_ACT_F32) {
#pragma omp for schedule(static)
        for (int64_t t = 0; t < n_tok; t++) memcpy((float *)buf + t * n_in, x + t * n_in, (size_t)n_in * sizeof(float));
        return 0;
    }
    if (act == REALM_ACT_F16 || act == REALM_ACT_BF16) {
#pragma omp for schedule(static)
        for (int64_t t = 0; t < n_tok; t++) {
            if (isa == REALM_ISA_AVX2) realm_round_rows_avx2(act, x, n_tok, n_in, buf, t, t + 1);
            else realm_round_rows_ref(act, x, n_tok, n_in, buf, t, t + 1);
        }
        return 0;
    }
#pragma omp for schedule(static)
    for (int64_t t = 0; t < n_tok; t++) {
        if (isa == REALM_ISA_AVX2) realm_q8_rows_avx2(act, x, n_tok, n_in, buf, t, t + 1);
        else realm_q8_rows_ref(act, x, n_tok, n_in, buf, t, t + 1);
    }
    return 0;
}

int realm_quantize_act(int act, const float *x, int64_t n_tok, int64_t n_in, void *buf, int nthreads, int isa) {
    int rc = check_act(act, n_tok, n_in);
    if (rc) return rc;
    int nt = realm_resolve_threads(nthreads);
    if (n_tok * n_in < MIN_PARALLEL_MACS / 4) nt = 1;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        const int r = realm_quantize_act_ws(act, x, n_tok, n_in, buf, isa);
#pragma omp master
        rc = r;
    }
    return rc;
}

typedef struct {
    realm_dot_fn fn;
    realm_dot_rows_fn rows; /* the path's several-rows kernel (same bits as fn), or NULL */
    realm_dot_wide_fn wide; /* its kernel of 16 rows for many tokens (same bits), or NULL */
    int wide_bytes;    /* its buffer's bytes per block of 16 rows */
    int act;
    int64_t nb;        /* blocks per weight row */
    int64_t row_bytes; /* bytes per weight row */
} plan;

static int make_plan(int wtype, int64_t n_out, int64_t n_in, int64_t n_tok, int isa, plan *p) {
    const realm_type_traits *tt = realm_get_traits(wtype);
    p->act = realm_act_type(wtype);
    if (!tt || p->act < 0) return REALM_EUNSUPPORTED;
    if (n_out < 0 || n_out > MAX_DIM) return REALM_EINVAL;
    int rc = check_act(p->act, n_tok, n_in);
    if (rc) return rc;
    if (n_in % tt->block_size) return REALM_EINVAL;
    if ((isa = realm_resolve_isa(isa)) < 0) return isa;
    /* The row's kernel for the path, else the next one down: avx512 -> vnni ->
     * avx2 -> ref, neon -> ref (the same bits on every path); never another format's. */
    const int whole = realm_whole_blocks(wtype, n_out);
    p->fn = NULL;
    p->rows = NULL;
    p->wide = NULL;
    p->wide_bytes = tt->wide_bytes;
    if (isa == REALM_ISA_AVX2 && realm_matmul_avx512(-1)) p->fn = tt->dot_avx512[whole];
    if (isa == REALM_ISA_AVX2 && !p->fn && realm_matmul_vnni(-1)) {
        p->fn = tt->dot_vnni[whole];
        p->rows = tt->rows_vnni[whole];
        if (n_tok >= tt->wide_min) p->wide = tt->wide_vnni[whole];
    }
    if (isa == REALM_ISA_AVX2 && !p->fn) p->fn = tt->dot_avx2[whole];
    if (isa == REALM_ISA_NEON) p->fn = tt->dot_neon[whole];
    if (!p->fn) p->fn = tt->dot_ref[whole];
    if (!p->fn) return REALM_EUNSUPPORTED;
    p->nb = n_in / tt->block_size;
    p->row_bytes = p->nb * tt->type_size;
    return 0;
}

/* Rows per tile: about 8 tiles per thread for balance, no more than
 * TILE_BYTES of weights when several token groups reuse the tile; a
 * multiple of 8 for a several-rows kernel (it takes rows 8 at a time), and
 * for one token group only 4 tiles per thread: such a kernel streams the
 * weights from memory with software prefetch, and each tile starts cold. */
static int64_t tile_rows(const plan *p, int64_t n_out, int64_t n_tok, int nt) {
    const int per_thread = p->rows && n_tok <= REALM_TOK_GROUP ? 4 : 8;
    int64_t r = (n_out + per_thread * nt - 1) / (per_thread * nt);
    if (n_tok > REALM_TOK_GROUP && !p->wide) { /* a wide kernel keeps its own copy of 16 rows */
        int64_t cap = TILE_BYTES / p->row_bytes;
        if (cap < 4) cap = 4;
        if (r > cap) r = cap;
    }
    if (p->wide) r = (r + 15) & ~(int64_t)15;
    else if (p->rows) r = (r + 7) & ~(int64_t)7;
    return r < 1 ? 1 : r;
}

/* Rows [r0, r1) with every token group, kernel by kernel (no wide kernel). */
static void tile_rows_by_group(const plan *p, const char *wb, int64_t r0, int64_t r1, int64_t n_out, int64_t n_in,
                               const void *act_buf, int64_t n_tok, float *y) {
    const int64_t n_groups = (n_tok + REALM_TOK_GROUP - 1) / REALM_TOK_GROUP;
    for (int64_t g = 0; g < n_groups; g++) {
        const realm_act_group view = realm_act_view(p->act, act_buf, n_tok, n_in, g);
        const int64_t left = n_tok - g * REALM_TOK_GROUP;
        const int ntok = left < REALM_TOK_GROUP ? (int)left : REALM_TOK_GROUP;
        float *yg = y + g * REALM_TOK_GROUP * n_out;
        if (p->rows) p->rows(p->nb, wb + r0 * p->row_bytes, r1 - r0, &view, ntok, yg + r0, n_out);
        else
            for (int64_t r = r0; r < r1; r++) p->fn(p->nb, wb + r * p->row_bytes, &view, ntok, yg + r, n_out);
    }
}

int realm_matmul_q_ws(int wtype, const void *w, int64_t n_out, int64_t n_in, const void *act_buf, int64_t n_tok,
                      float *y, int isa) {
    plan p;
    const int rc = make_plan(wtype, n_out, n_in, n_tok, isa, &p);
    if (rc) return rc;
    if (n_out == 0 || n_tok == 0) return 0;
#ifdef _OPENMP
    const int nt = omp_get_num_threads();
#else
    const int nt = 1;
#endif
    const int64_t rows = tile_rows(&p, n_out, n_tok, nt);
    const int64_t n_tiles = (n_out + rows - 1) / rows;
    const int64_t n_groups = (n_tok + REALM_TOK_GROUP - 1) / REALM_TOK_GROUP;
    const char *wb = w;
    /* a wide kernel's scratch and the groups' views, this thread's own; without them (no
     * memory) the tiles go kernel by kernel, to the same floats */
    void *scratch = NULL;
    realm_act_group *views = NULL;
    if (p.wide) {
        const size_t bytes = (size_t)p.nb * (size_t)p.wide_bytes, vbytes = (size_t)n_groups * sizeof *views;
        scratch = aligned_alloc(64, (bytes + vbytes + 63) & ~(size_t)63);
        if (scratch) {
            views = (realm_act_group *)((char *)scratch + bytes);
            for (int64_t g = 0; g < n_groups; g++) views[g] = realm_act_view(p.act, act_buf, n_tok, n_in, g);
        }
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t tile = 0; tile < n_tiles; tile++) {
        int64_t r0 = tile * rows;
        const int64_t r1 = r0 + rows < n_out ? r0 + rows : n_out;
        if (scratch && r1 - r0 >= 16) {
            const int64_t r16 = r0 + ((r1 - r0) & ~(int64_t)15);
            p.wide(p.nb, wb + r0 * p.row_bytes, r16 - r0, views, n_tok, y + r0, n_out, scratch);
            r0 = r16;
        }
        if (r0 < r1) tile_rows_by_group(&p, wb, r0, r1, n_out, n_in, act_buf, n_tok, y);
    }
    free(scratch);
    return 0;
}

static int threads_for(int nthreads, int64_t n_out, int64_t n_in, int64_t n_tok) {
    const int nt = realm_resolve_threads(nthreads);
    return n_out * n_in * n_tok < MIN_PARALLEL_MACS ? 1 : nt;
}

int realm_matmul_q(int wtype, const void *w, int64_t n_out, int64_t n_in, const void *act_buf, int64_t n_tok, float *y,
                   int nthreads, int isa) {
    plan p;
    int rc = make_plan(wtype, n_out, n_in, n_tok, isa, &p);
    if (rc) return rc;
    const int nt = threads_for(nthreads, n_out, n_in, n_tok);
#pragma omp parallel num_threads(nt) if (nt > 1)
    realm_matmul_q_ws(wtype, w, n_out, n_in, act_buf, n_tok, y, isa);
    return 0;
}

int realm_matmul(int wtype, const void *w, int64_t n_out, int64_t n_in, const float *x, int64_t n_tok, float *y,
                 int nthreads, int isa) {
    plan p;
    int rc = make_plan(wtype, n_out, n_in, n_tok, isa, &p);
    if (rc) return rc;
    if (p.act == REALM_ACT_F32) return realm_matmul_q(wtype, w, n_out, n_in, x, n_tok, y, nthreads, isa);
    const int64_t size = realm_act_size(p.act, n_tok, n_in);
    void *buf = aligned_alloc(64, (size_t)(size > 0 ? (size + 63) & ~(int64_t)63 : 64)); /* a multiple of 64 */
    if (!buf) return REALM_ENOMEM;
    const int nt = threads_for(nthreads, n_out, n_in, n_tok);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        realm_quantize_act_ws(p.act, x, n_tok, n_in, buf, isa);
        realm_matmul_q_ws(wtype, w, n_out, n_in, buf, n_tok, y, isa);
    }
    free(buf);
    return 0;
}
