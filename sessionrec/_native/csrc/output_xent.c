/* The output layer of a cross-entropy training step, products included.
 *
 * Part of the fused kernels' single translation unit: included by fused.c after
 * kernels.h, in the order fused.c gives; not compiled on its own. */

/* ---- The output layer of a cross-entropy training step, products included ----
 *
 * scores = [h | 1] W^T over the U distinct sampled items, the sampled softmax
 * cross-entropy over the B + S columns, computed over distinct items with log_weights,
 * and the two gradient products
 * out_grad = D^T [h | 1] and d_h = D W[:, :H], in one call. The batch's rows are "lanes":
 * scores are kept transposed, one item per row of 32 lanes (the batch padded to a multiple
 * of 32 with zero rows whose gradient is zero), so the softmax's per-row maxima and sums
 * become element-wise vector operations over items. Items are cut into blocks of
 * OUT_BLOCK; each thread takes a contiguous run of blocks, and per-block maxima and sums
 * are combined in block order, so the results do not depend on the number of threads.
 * The products use fused multiply-adds where the processor has them (unlike the
 * element-wise kernels above, whose plain IEEE sequence matches PyTorch's). */
#define OUT_BLOCK 64
#define LANES 32

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#if __GNUC__ >= 11 /* x86-64-v3: AVX2 and FMA, chosen by the processor's features */
#define GEMM_KERNEL \
    __attribute__((target_clones("arch=x86-64-v3", "default"), optimize("fp-contract=fast")))
#else
#define GEMM_KERNEL KERNEL
#endif
#else
#define GEMM_KERNEL
#endif
/* Macros rather than the inline helpers above: in these FMA clones GCC 12 compiled the
 * helper versions of the tiles into markedly slower code (measured: up to 3x, on the d_h
 * product). */
#define VLOAD(p) ((vf8)(*(const vf8_unaligned *)(p)))
#define VSTORE(p, v) (*(vf8_unaligned *)(p) = (v))
#define VSPLAT(x) ({ const float x_ = (x); (vf8){x_, x_, x_, x_, x_, x_, x_, x_}; })

typedef struct {
    int64_t B, H, K, Kp, U, n_chunks, n_blocks;
    const float *table;       /* rows of K: [W_u | b_u] of every item */
    const int64_t *row_index; /* U: the distinct items' rows of the table */
    const int64_t *column_of;
    const float *shift;
    const float *log_weight;
    float *top_t;       /* n_chunks x K x LANES: [h | 1] transposed, zero-padded lanes */
    float *top;         /* (n_chunks * LANES) x Kp: [h | 1], zero-padded */
    float *st;          /* n_chunks x U x LANES: logits, then exp, then the gradient */
    float *block_max;   /* n_chunks x n_blocks x LANES */
    float *block_sum;   /* n_chunks x n_blocks x LANES */
    float *lane_max, *lane_factor; /* n_chunks x LANES each */
    float *out_grad;    /* U x K */
    float *d_h;         /* B x H */
    double *parts;      /* 2 x B */
} OutputStep;

/* Logits of items [lo, hi) for one chunk of lanes, and the per-block lane maxima. */
static GEMM_KERNEL void output_logits(const OutputStep *s, int64_t chunk, int64_t block_lo,
                                      int64_t block_hi) {
    const int64_t K = s->K;
    const float *top_t = s->top_t + chunk * K * LANES;
    float *st = s->st + chunk * s->U * LANES;
    for (int64_t block = block_lo; block < block_hi; ++block) {
        const int64_t lo = block * OUT_BLOCK;
        const int64_t hi = lo + OUT_BLOCK < s->U ? lo + OUT_BLOCK : s->U;
        int64_t j = lo;
        for (; j + 3 <= hi; j += 3) {
            const float *r0 = s->table + s->row_index[j] * K,
                        *r1 = s->table + s->row_index[j + 1] * K,
                        *r2 = s->table + s->row_index[j + 2] * K;
            vf8 a00 = VSPLAT(0.0f), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00,
                a12 = a00, a13 = a00, a20 = a00, a21 = a00, a22 = a00, a23 = a00;
            for (int64_t k = 0; k < K; ++k) {
                const float *t = top_t + k * LANES;
                const vf8 t0 = VLOAD(t), t1 = VLOAD(t + 8), t2 = VLOAD(t + 16),
                          t3 = VLOAD(t + 24);
                const vf8 b0 = VSPLAT(r0[k]), b1 = VSPLAT(r1[k]), b2 = VSPLAT(r2[k]);
                a00 += b0 * t0; a01 += b0 * t1; a02 += b0 * t2; a03 += b0 * t3;
                a10 += b1 * t0; a11 += b1 * t1; a12 += b1 * t2; a13 += b1 * t3;
                a20 += b2 * t0; a21 += b2 * t1; a22 += b2 * t2; a23 += b2 * t3;
            }
            float *o = st + j * LANES;
            VSTORE(o, a00); VSTORE(o + 8, a01); VSTORE(o + 16, a02); VSTORE(o + 24, a03);
            VSTORE(o + 32, a10); VSTORE(o + 40, a11); VSTORE(o + 48, a12); VSTORE(o + 56, a13);
            VSTORE(o + 64, a20); VSTORE(o + 72, a21); VSTORE(o + 80, a22); VSTORE(o + 88, a23);
        }
        for (; j < hi; ++j) {
            const float *r0 = s->table + s->row_index[j] * K;
            vf8 a0 = VSPLAT(0.0f), a1 = a0, a2 = a0, a3 = a0;
            for (int64_t k = 0; k < K; ++k) {
                const float *t = top_t + k * LANES;
                const vf8 b = VSPLAT(r0[k]);
                a0 += b * VLOAD(t); a1 += b * VLOAD(t + 8);
                a2 += b * VLOAD(t + 16); a3 += b * VLOAD(t + 24);
            }
            float *o = st + j * LANES;
            VSTORE(o, a0); VSTORE(o + 8, a1); VSTORE(o + 16, a2); VSTORE(o + 24, a3);
        }
        /* + log w_u (the logQ-weighted multiplicity of the item), and the block maxima */
        vf8 m[4];
        for (int v = 0; v < 4; ++v) m[v] = VSPLAT(-__builtin_inff());
        for (j = lo; j < hi; ++j) {
            const vf8 w = VSPLAT(s->log_weight[j]);
            for (int v = 0; v < 4; ++v) {
                const vf8 x = VLOAD(st + j * LANES + 8 * v) + w;
                VSTORE(st + j * LANES + 8 * v, x);
                m[v] = max8(x, m[v]);
            }
        }
        for (int v = 0; v < 4; ++v)
            VSTORE(s->block_max + (chunk * s->n_blocks + block) * LANES + 8 * v, m[v]);
    }
}

/* exp(logit - lane max) in place, and the per-block lane sums. */
static GEMM_KERNEL void output_exp(const OutputStep *s, int64_t chunk, int64_t block_lo,
                                   int64_t block_hi) {
    float *st = s->st + chunk * s->U * LANES;
    const float *top = s->lane_max + chunk * LANES;
    for (int64_t block = block_lo; block < block_hi; ++block) {
        const int64_t lo = block * OUT_BLOCK;
        const int64_t hi = lo + OUT_BLOCK < s->U ? lo + OUT_BLOCK : s->U;
        for (int v = 0; v < 4; ++v) {
            const vf8 m = VLOAD(top + 8 * v);
            vf8 sum = VSPLAT(0.0f);
            for (int64_t j = lo; j < hi; ++j) {
                const vf8 e = exp8(VLOAD(st + j * LANES + 8 * v) - m);
                VSTORE(st + j * LANES + 8 * v, e);
                sum += e;
            }
            VSTORE(s->block_sum + (chunk * s->n_blocks + block) * LANES + 8 * v, sum);
        }
    }
}

/* out_grad[j:j+NI, k0:k0+8*NV] = sum over all lanes b of D[j+x, b] * [h | 1][b, k0:...]:
 * NI items x NV vectors of accumulators; a partial last vector is stored element-wise. */
#define OUT_GRAD_TILE(NI, NV)                                                            \
    do {                                                                                 \
        vf8 acc[NI][NV];                                                                 \
        for (int x = 0; x < NI; ++x)                                                     \
            for (int y = 0; y < NV; ++y) acc[x][y] = VSPLAT(0.0f);                       \
        for (int64_t chunk = 0; chunk < s->n_chunks; ++chunk) {                          \
            const float *d = s->st + chunk * U * LANES + j * LANES;                      \
            const float *t = s->top + chunk * LANES * Kp + k0;                           \
            for (int64_t l = 0; l < LANES; ++l, t += Kp) {                               \
                vf8 tv[NV];                                                              \
                for (int y = 0; y < NV; ++y) tv[y] = VLOAD(t + 8 * y);                   \
                for (int x = 0; x < NI; ++x) {                                           \
                    const vf8 dx = VSPLAT(d[x * LANES + l]);                             \
                    for (int y = 0; y < NV; ++y) acc[x][y] += dx * tv[y];                \
                }                                                                        \
            }                                                                            \
        }                                                                                \
        for (int x = 0; x < NI; ++x) {                                                   \
            float *o = s->out_grad + (j + x) * K + k0;                                   \
            for (int y = 0; y < NV; ++y) {                                               \
                const int64_t width = K - (k0 + 8 * y) < 8 ? K - (k0 + 8 * y) : 8;       \
                if (width == 8) {                                                        \
                    VSTORE(o + 8 * y, acc[x][y]);                                        \
                } else {                                                                 \
                    for (int64_t e = 0; e < width; ++e) o[8 * y + e] = acc[x][y][e];     \
                }                                                                        \
            }                                                                            \
        }                                                                                \
    } while (0)

/* The gradient of the mean loss over the items of blocks [block_lo, block_hi), and their
 * rows of out_grad = D^T [h | 1]. */
static GEMM_KERNEL void output_grad_rows(const OutputStep *s, int64_t block_lo,
                                         int64_t block_hi) {
    const int64_t K = s->K, Kp = s->Kp, U = s->U, B = s->B;
    const float scale = 1.0f / (float)B;
    for (int64_t block = block_lo; block < block_hi; ++block) {
        const int64_t lo = block * OUT_BLOCK;
        const int64_t hi = lo + OUT_BLOCK < U ? lo + OUT_BLOCK : U;
        for (int64_t chunk = 0; chunk < s->n_chunks; ++chunk) {
            float *st = s->st + chunk * U * LANES;
            const float *factor = s->lane_factor + chunk * LANES;
            for (int64_t j = lo; j < hi; ++j)
                for (int v = 0; v < 4; ++v)
                    VSTORE(st + j * LANES + 8 * v,
                           VLOAD(st + j * LANES + 8 * v) * VLOAD(factor + 8 * v));
        }
        for (int64_t b = 0; b < B; ++b) {
            const int64_t target = s->column_of[b];
            if (target >= lo && target < hi)
                s->st[(b / LANES) * U * LANES + target * LANES + b % LANES] -= scale;
        }
        /* out_grad rows: 4 items x 24 columns at a time, over all lanes */
        int64_t j = lo;
        for (; j + 4 <= hi; j += 4) {
            int64_t k0 = 0;
            for (; k0 + 24 <= Kp; k0 += 24) OUT_GRAD_TILE(4, 3);
            for (; k0 < Kp; k0 += 8) OUT_GRAD_TILE(4, 1);
        }
        for (; j < hi; ++j)
            for (int64_t k0 = 0; k0 < Kp; k0 += 8) OUT_GRAD_TILE(1, 1);
    }
}

/* d_h[:, k:k+NC] = D W[:, k:k+NC] over all items, in item order, for one chunk. */
#define GRAD_H_TILE(NC)                                                                  \
    do {                                                                                 \
        vf8 acc[NC][4];                                                                  \
        for (int x = 0; x < NC; ++x)                                                     \
            for (int v = 0; v < 4; ++v) acc[x][v] = VSPLAT(0.0f);                        \
        const float *d = st;                                                             \
        for (int64_t j = 0; j < U; ++j, d += LANES) {                                    \
            const float *r = s->table + s->row_index[j] * K + k;                         \
            const vf8 d0 = VLOAD(d), d1 = VLOAD(d + 8), d2 = VLOAD(d + 16),              \
                      d3 = VLOAD(d + 24);                                                \
            for (int x = 0; x < NC; ++x) {                                               \
                const vf8 w = VSPLAT(r[x]);                                              \
                acc[x][0] += w * d0; acc[x][1] += w * d1;                                \
                acc[x][2] += w * d2; acc[x][3] += w * d3;                                \
            }                                                                            \
        }                                                                                \
        for (int x = 0; x < NC; ++x)                                                     \
            for (int64_t l = 0; l < lanes; ++l)                                          \
                s->d_h[(chunk * LANES + l) * s->H + k + x] = acc[x][l / 8][l % 8];       \
    } while (0)

/* d_h[:, k] = D W[:, k] for k in [k_lo, k_hi). */
static GEMM_KERNEL void output_grad_h(const OutputStep *s, int64_t k_lo, int64_t k_hi) {
    const int64_t K = s->K, U = s->U;
    for (int64_t chunk = 0; chunk < s->n_chunks; ++chunk) {
        const float *st = s->st + chunk * U * LANES;
        const int64_t lanes = s->B - chunk * LANES < LANES ? s->B - chunk * LANES : LANES;
        int64_t k = k_lo;
        for (; k + 3 <= k_hi; k += 3) GRAD_H_TILE(3);
        for (; k < k_hi; ++k) GRAD_H_TILE(1);
    }
}

/* The phases, for thread t of T; barriers between them (no-ops on one thread). */
static void output_phases(OutputStep *s, int64_t t, int64_t T) {
    const int64_t nb = s->n_blocks, block_lo = nb * t / T, block_hi = nb * (t + 1) / T;
    for (int64_t chunk = 0; chunk < s->n_chunks; ++chunk)
        output_logits(s, chunk, block_lo, block_hi);
#ifdef _OPENMP
#pragma omp barrier
#endif
    if (t == 0) { /* lane maxima (exact in any order) and each lane's target logit */
        for (int64_t chunk = 0; chunk < s->n_chunks; ++chunk) {
            for (int64_t l = 0; l < LANES; ++l) {
                float m = -__builtin_inff();
                for (int64_t block = 0; block < nb; ++block) {
                    const float x = s->block_max[(chunk * nb + block) * LANES + l];
                    m = x > m ? x : m;
                }
                s->lane_max[chunk * LANES + l] = m;
            }
        }
        for (int64_t b = 0; b < s->B; ++b) {
            const int64_t chunk = b / LANES, l = b % LANES;
            const float logit = s->st[(chunk * s->U + s->column_of[b]) * LANES + l];
            s->parts[2 * b] = (double)(logit - s->lane_max[chunk * LANES + l]);
        }
    }
#ifdef _OPENMP
#pragma omp barrier
#endif
    for (int64_t chunk = 0; chunk < s->n_chunks; ++chunk)
        output_exp(s, chunk, block_lo, block_hi);
#ifdef _OPENMP
#pragma omp barrier
#endif
    if (t == 0) { /* lane sums in block order; each lane's loss terms and gradient factor */
        const float scale = 1.0f / (float)s->B;
        for (int64_t chunk = 0; chunk < s->n_chunks; ++chunk) {
            for (int64_t l = 0; l < LANES; ++l) {
                const int64_t b = chunk * LANES + l;
                float total = 0.0f;
                for (int64_t block = 0; block < nb; ++block)
                    total += s->block_sum[(chunk * nb + block) * LANES + l];
                s->lane_factor[b] = b < s->B ? scale / total : 0.0f;
                if (b < s->B) {
                    const int64_t target = s->column_of[b];
                    s->parts[2 * b] = (double)__builtin_logf(total) - s->parts[2 * b];
                    s->parts[2 * b + 1] = (double)s->log_weight[target] -
                                          (s->shift ? (double)s->shift[b] : 0.0);
                }
            }
        }
    }
#ifdef _OPENMP
#pragma omp barrier
#endif
    output_grad_rows(s, block_lo, block_hi);
#ifdef _OPENMP
#pragma omp barrier
#endif
    const int64_t n_col_blocks = (s->H + 2) / 3;
    output_grad_h(s, n_col_blocks * t / T * 3,
                  t == T - 1 ? s->H : n_col_blocks * (t + 1) / T * 3);
}

/* Floats the per-row loss terms (2 B doubles) take at the head of the scratch, rounded
 * to 64 bytes so that the arrays after them keep the scratch's alignment. */
static int64_t parts_floats(int64_t B) {
    return (2 * B * (int64_t)(sizeof(double) / sizeof(float)) + 15) / 16 * 16;
}

/* Floats of scratch sr_output_xent_f32 needs (its start aligned to 8 bytes at least). */
EXPORT int64_t sr_output_xent_scratch(int64_t B, int64_t H, int64_t U) {
    const int64_t K = H + 1, Kp = (K + 7) / 8 * 8, n_chunks = (B + LANES - 1) / LANES;
    const int64_t n_blocks = (U + OUT_BLOCK - 1) / OUT_BLOCK;
    return parts_floats(B) + n_chunks * LANES * (K + Kp + U + 2 * n_blocks + 2) + U;
}

/* h: B x H (row stride ldh), the last layer's output; table: rows of H + 1 holding each
 * item's [W_u | b_u], read where it lies (no gathered copy); row_index: the table's rows
 * of the U distinct items; column_of: the distinct item of each of n_cols columns (the
 * rows' targets first); shift: the columns' logQ corrections, or NULL. Writes out_grad
 * (U x (H + 1)) and d_h (B x H), the gradients of the mean loss; returns the loss summed
 * over rows, in the columns' space. scratch: sr_output_xent_scratch(B, H, U) floats. */
EXPORT double sr_output_xent_f32(const float *h, int64_t B, int64_t H, int64_t ldh,
                                 const float *table, const int64_t *row_index, int64_t U,
                                 const int64_t *column_of,
                                 int64_t n_cols, const float *shift, float *out_grad,
                                 float *d_h, float *scratch, int64_t n_threads) {
    double *parts = (double *)scratch;
    OutputStep s;
    s.B = B; s.H = H; s.K = H + 1; s.Kp = (s.K + 7) / 8 * 8; s.U = U;
    s.n_chunks = (B + LANES - 1) / LANES;
    s.n_blocks = (U + OUT_BLOCK - 1) / OUT_BLOCK;
    s.table = table; s.row_index = row_index; s.column_of = column_of; s.shift = shift;
    s.out_grad = out_grad; s.d_h = d_h; s.parts = parts;
    const int64_t lanes = s.n_chunks * LANES;
    float *next = scratch + parts_floats(B);
    s.top_t = next; next += s.n_chunks * s.K * LANES;
    s.top = next; next += lanes * s.Kp;
    s.st = next; next += s.n_chunks * U * LANES;
    s.block_max = next; next += s.n_chunks * s.n_blocks * LANES;
    s.block_sum = next; next += s.n_chunks * s.n_blocks * LANES;
    s.lane_max = next; next += lanes;
    s.lane_factor = next; next += lanes;
    float *log_weight = next;
    log_weights(log_weight, U, column_of, n_cols, shift);
    s.log_weight = log_weight;
    /* [h | 1], padded with zero rows (lanes) and columns, in both layouts */
    for (int64_t b = 0; b < lanes; ++b) {
        for (int64_t k = 0; k < s.Kp; ++k) {
            const float x = b >= B || k > H ? 0.0f : (k == H ? 1.0f : h[b * ldh + k]);
            s.top[b * s.Kp + k] = x;
            if (k < s.K) s.top_t[((b / LANES) * s.K + k) * LANES + b % LANES] = x;
        }
    }
    const int use = n_threads > 1 && B * U * s.K >= 4 * MIN_PARALLEL && s.n_blocks > 1
                        ? (int)n_threads : 1;
#ifdef _OPENMP
    if (use > 1) {
#pragma omp parallel num_threads(use)
        output_phases(&s, omp_get_thread_num(), omp_get_num_threads());
    } else {
        output_phases(&s, 0, 1);
    }
#else
    (void)use;
    output_phases(&s, 0, 1);
#endif
    double loss = 0.0;
    for (int64_t k = 0; k < 2 * B; ++k) loss += parts[k];
    return loss;
}
