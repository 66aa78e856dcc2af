/* bpr-max: loss and gradient over a step's columns.
 *
 * Part of the fused kernels' single translation unit: included by fused.c after
 * kernels.h, in the order fused.c gives; not compiled on its own. */

/* ---- bpr-max (Hidasi & Karatzoglou, CIKM 2018): loss and gradient over a step's columns ----
 *
 * bpr_max_closed_form in _losses.py, one row at a time: the row's scores gathered into its
 * columns, the ELU if asked, the softmax over the negatives, the ranking and
 * regularisation terms, the gradient, and its sum back onto the distinct items, in a few
 * passes over a buffer that stays in the first-level cache. Each row is one thread's, and
 * its sums are taken lane by lane and then across lanes in a fixed order. */

static inline float lanes_sum(vf8 v) {
    return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
}

static inline vf8 select8(vi8 mask, vf8 yes, vf8 no) {
    return (vf8)((mask & (vi8)yes) | (~mask & (vi8)no));
}

/* Rows [lo, hi); work: 4 N floats. */
static KERNEL void bpr_max_rows(const float *scores, int64_t ld, const int64_t *column_of,
                                int64_t N, const float *shift, float bpreg, int elu,
                                float alpha, float scale, float *d_distinct, int64_t U,
                                float *work, double *row_loss, int64_t lo, int64_t hi) {
    float *s = work, *slope = work + N, *w = work + 2 * N, *g = work + 3 * N;
    for (int64_t i = lo; i < hi; ++i) {
        const float *row = scores + i * ld;
        for (int64_t j = 0; j < N; ++j)
            s[j] = shift ? row[column_of[j]] + shift[j] : row[column_of[j]];
        if (elu) { /* s = ELU(x), and its slope */
            RANGE_LOOP(0, N, {
                const vf8 x = load_part(s + j0, width);
                const vi8 positive = x > 0.0f;
                const vf8 v = select8(positive, x, (exp8(x) - 1.0f) * alpha);
                store_part(s + j0, v, width);
                store_part(slope + j0, select8(positive, splat8(1.0f), v + alpha), width);
            })
        }
        /* the softmax over the negatives (the target's column i excluded) */
        const float target = s[i];
        s[i] = -__builtin_inff(); /* out of the maximum, for now */
        vf8 top8 = splat8(-__builtin_inff());
        int64_t j = 0;
        for (; j + 8 <= N; j += 8) top8 = max8(top8, load8(s + j));
        float top = top8[0];
        for (int l = 1; l < 8; ++l) top = top8[l] > top ? top8[l] : top;
        for (; j < N; ++j) top = s[j] > top ? s[j] : top;
        s[i] = target;
        RANGE_LOOP(0, N, store_part(w + j0, exp8(load_part(s + j0, width) - top), width);)
        w[i] = 0.0f;
        vf8 lanes = splat8(0.0f);
        for (j = 0; j + 8 <= N; j += 8) lanes = lanes + load8(w + j);
        float total = lanes_sum(lanes);
        for (; j < N; ++j) total += w[j];
        /* w, g = sigmoid(target - s), R = sum w g, Q = sum w s^2 */
        vf8 r_lanes = splat8(0.0f), q_lanes = splat8(0.0f);
        RANGE_LOOP(0, N, {
            const vf8 sv = load_part(s + j0, width);
            const vf8 wv = load_part(w + j0, width) / total;
            const vf8 gv = 1.0f / (1.0f + exp8(sv - target));
            store_part(w + j0, wv, width);
            store_part(g + j0, gv, width);
            r_lanes = r_lanes + wv * gv; /* padded lanes hold w = 0 */
            q_lanes = q_lanes + wv * (sv * sv);
        })
        const float ranked = lanes_sum(r_lanes), reg = lanes_sum(q_lanes);
        const float inv = 1.0f / (ranked + 1e-24f);
        row_loss[i] = -(double)__builtin_logf(ranked + 1e-24f) + (double)(bpreg * reg);
        /* the gradient of the mean loss: negatives here, the target's from the sum */
        vf8 t_lanes = splat8(0.0f);
        RANGE_LOOP(0, N, {
            const vf8 sv = load_part(s + j0, width), wv = load_part(w + j0, width);
            const vf8 gv = load_part(g + j0, width), wg = wv * gv;
            t_lanes = t_lanes + wg * (1.0f - gv);
            vf8 d = (wg * gv - wv * ranked) * -inv + (wv * ((sv * sv - reg) + 2.0f * sv)) * bpreg;
            if (elu) d = d * load_part(slope + j0, width);
            store_part(w + j0, d * scale, width);
        })
        float d_target = -lanes_sum(t_lanes) * inv;
        if (elu) d_target = d_target * slope[i];
        w[i] = d_target * scale;
        float *out = d_distinct + i * U;
        for (int64_t u = 0; u < U; ++u) out[u] = 0.0f;
        for (int64_t k = 0; k < N; ++k) out[column_of[k]] += w[k]; /* in column order */
    }
}

/* scores: B x U (row stride ld), the batch's scores of the step's U distinct items;
 * column_of: the distinct item of each of the N columns (column i is row i's target);
 * shift (N, or NULL): added to the columns' scores. Writes d_distinct (B x U), the
 * gradient of the mean loss for the scores, and row_loss (B), each row's loss. work:
 * sr_bpr_max_scratch(N, n_threads) floats. ELU (elu != 0, parameter alpha) is applied
 * to the scores inside the loss. */
EXPORT int64_t sr_bpr_max_scratch(int64_t N, int64_t n_threads) {
    return 4 * N * (n_threads > 1 ? n_threads : 1);
}

EXPORT void sr_bpr_max_f32(const float *scores, int64_t B, int64_t U, int64_t ld,
                           const int64_t *column_of, int64_t N, const float *shift,
                           float bpreg, int64_t elu, float alpha, float *d_distinct,
                           double *row_loss, float *work, int64_t n_threads) {
    const float scale = 1.0f / (float)B;
#ifdef _OPENMP
    const int use = n_threads > 1 && B * N >= MIN_PARALLEL && B > 1 ? (int)n_threads : 1;
    if (use > 1) {
#pragma omp parallel num_threads(use)
        {
            const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
            int64_t lo, hi;
            share(B, t, T, 1, &lo, &hi);
            bpr_max_rows(scores, ld, column_of, N, shift, bpreg, (int)elu, alpha, scale,
                         d_distinct, U, work + t * 4 * N, row_loss, lo, hi);
        }
        return;
    }
#else
    (void)n_threads;
#endif
    bpr_max_rows(scores, ld, column_of, N, shift, bpreg, (int)elu, alpha, scale, d_distinct,
                 U, work, row_loss, 0, B);
}
