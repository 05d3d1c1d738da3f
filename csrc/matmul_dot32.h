/* The 32-value formats' AVX2 kernels, included by matmul_avx2.c once per
 * instruction set with DOT32_ATTR (the target attribute), DOT32_NAME(x) (the
 * names' suffix) and DOT32_LANES(au, sx) (8 int32 sums of 4 products of the
 * unsigned bytes au and signed bytes sx: maddubs + madd, or VNNI's dpbusd;
 * the sums are exact, so every instruction set gives the same bits). */

/* Per block: acc[t] = fma(dw * dx_t, lanes, acc[t]); with a minimum, the
 * tokens' summs (one per lane of sm) = fma(m, s_t, summs). */
DOT32_ATTR INLINE void DOT32_NAME(dot32_k)(int64_t nb, const void *w, const realm_act_group *a, float *y, int64_t ys, const int T,
                         const int type) {
    const int with_min = type == REALM_TYPE_Q4_1 || type == REALM_TYPE_Q5_1;
    __m256 acc[G], sm = _mm256_setzero_ps();
    for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const __m256i u = decode32(w, b, type);
        const __m256i au = with_min ? u : _mm256_sign_epi8(u, u);
        float dw, mw = 0.0f;
        scales32(w, b, type, &dw, &mw);
        const float *dx = a->d + realm_act_slot(0, b);
        /* dw * dx for every token at once (the same products), then broadcast from memory */
        float d[G];
        if (T > 1) _mm256_storeu_ps(d, _mm256_mul_ps(_mm256_set1_ps(dw), _mm256_loadu_ps(dx)));
        for (int t = 0; t < T; t++) {
            const __m256i x = load32(TOKEN_ROW(a, t) + 32 * b);
            const __m256i p = DOT32_LANES(au, with_min ? x : _mm256_sign_epi8(x, u));
            const __m256 dt = T > 1 ? _mm256_broadcast_ss(d + t) : _mm256_set1_ps(dw * dx[0]);
            acc[t] = _mm256_fmadd_ps(dt, _mm256_cvtepi32_ps(p), acc[t]);
        }
        if (with_min) sm = _mm256_fmadd_ps(_mm256_set1_ps(mw), _mm256_loadu_ps(a->s + realm_act_slot(0, b)), sm);
    }
    float summs[G];
    _mm256_storeu_ps(summs, sm);
    for (int t = 0; t < T; t++) y[t * ys] = with_min ? hsum8(acc[t]) + summs[t] : hsum8(acc[t]);
}

/* Q4_0 as llama.cpp multiplies a repacked matrix: whole-block sums.  One
 * token takes 4 blocks' sums from one reduction, then folds them in order. */
DOT32_ATTR INLINE __m256i DOT32_NAME(q4_0_lanes)(const void *w, int64_t b, __m256i x) {
    const __m256i u = decode32(w, b, REALM_TYPE_Q4_0);
    return DOT32_LANES(_mm256_sign_epi8(u, u), _mm256_sign_epi8(x, u));
}

DOT32_ATTR INLINE void DOT32_NAME(q4_0_whole_k)(int64_t nb, const void *w, const realm_act_group *a, float *y, int64_t ys, const int T) {
    const block_q4_0 *x = w;
    if (T == 1) {
        __m128 acc = _mm_setzero_ps();
        int64_t b = 0;
        for (; b + 4 <= nb; b += 4) {
            __m256i l[4];
            for (int k = 0; k < 4; k++) l[k] = DOT32_NAME(q4_0_lanes)(w, b + k, load32(a->qs + 32 * (b + k)));
            const __m128 isum = _mm_cvtepi32_ps(hsum4(l, 4));
            const uint16_t dh[4] = {x[b].d, x[b + 1].d, x[b + 2].d, x[b + 3].d};
            const __m128 dx = _mm_setr_ps(a->d[realm_act_slot(0, b)], a->d[realm_act_slot(0, b + 1)],
                                          a->d[realm_act_slot(0, b + 2)], a->d[realm_act_slot(0, b + 3)]);
            const __m128 d = _mm_mul_ps(_mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)dh)), dx);
            acc = _mm_fmadd_ss(isum, d, acc);
            acc = _mm_fmadd_ss(_mm_shuffle_ps(isum, isum, 1), _mm_shuffle_ps(d, d, 1), acc);
            acc = _mm_fmadd_ss(_mm_shuffle_ps(isum, isum, 2), _mm_shuffle_ps(d, d, 2), acc);
            acc = _mm_fmadd_ss(_mm_shuffle_ps(isum, isum, 3), _mm_shuffle_ps(d, d, 3), acc);
        }
        for (; b < nb; b++) {
            const __m256i l = DOT32_NAME(q4_0_lanes)(w, b, load32(a->qs + 32 * b));
            acc = _mm_fmadd_ss(_mm_cvtepi32_ps(hsum4(&l, 1)), _mm_set_ss(_cvtsh_ss(x[b].d) * a->d[realm_act_slot(0, b)]), acc);
        }
        y[0] = _mm_cvtss_f32(acc);
        return;
    }
    WHOLE_ACC;
    for (int64_t b = 0; b < nb; b++) {
        __m256i l[G];
        for (int t = 0; t < T; t++) l[t] = DOT32_NAME(q4_0_lanes)(w, b, load32(TOKEN_ROW(a, t) + 32 * b));
        whole_fold(acc, l, _cvtsh_ss(x[b].d), a->d + realm_act_slot(0, b), T);
    }
    whole_store(y, ys, acc, NULL, T);
}

/* The entry points, realm_<format>_dot[_whole]_<suffix> (kernels.h), each
 * passing its own type to the helpers above. */
#define DOT32_KERNEL(NAME, WTYPE)                                                                            \
    DOT32_ATTR void DOT32_NAME(NAME)(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, \
                                     int64_t ys) {                                                          \
        DISPATCH_T(ntok, DOT32_NAME(dot32_k)(nb, w, a, y, ys, T_, WTYPE));                                 \
    }

DOT32_KERNEL(realm_q4_0_dot, REALM_TYPE_Q4_0)
DOT32_KERNEL(realm_q4_1_dot, REALM_TYPE_Q4_1)
DOT32_KERNEL(realm_q5_0_dot, REALM_TYPE_Q5_0)
DOT32_KERNEL(realm_q5_1_dot, REALM_TYPE_Q5_1)
DOT32_KERNEL(realm_q8_0_dot, REALM_TYPE_Q8_0)
#undef DOT32_KERNEL

DOT32_ATTR void DOT32_NAME(realm_q4_0_dot_whole)(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y,
                                                 int64_t ys) {
    DISPATCH_T(ntok, DOT32_NAME(q4_0_whole_k)(nb, w, a, y, ys, T_));
}
