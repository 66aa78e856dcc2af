/* The exact k best items of [h | 1] W from int8 scores with proven error bounds (live
 * sessions: the lists of sr_product_topk_f32, bit for bit, for a quarter of its memory
 * traffic and a sixteenth of its instructions where the processor has AVX512-VNNI).
 *
 * Part of the fused kernels' single translation unit: included by fused.c after topk.c;
 * not compiled on its own.
 *
 * Scoring a row reads the whole table: 16 MB of floats for 40,000 items of 100 units,
 * which bounds one click's latency by memory bandwidth and a batch's by the float
 * multiply-adds. Here each item's weights are quantised to int8 with their own scale s_i
 * (sr_pack_int8_strips), a row to uint8 with one scale s_h, and VPDPBUSD sums 64 of their
 * products per instruction, exactly in int32. Against the exact score E (the float chain
 * of sr_product_topk_f32) the approximation errs by at most
 *
 *   e = s_i |h|_1 / 2 + s_h |w_i|_1 / 2 + 3 K s_h s_i / 4          (the quantisation)
 *     + g (|h|_inf |w_i|_1 + |b_i|) + rel (|approx| + |b_i|) + tiny (float rounding)
 *
 * bounded per block of 16 items by their largest s_i, |w_i|_1 and |b_i|. With L = approx
 * - e and U = approx + e, T = the k-th largest L is at most the k-th largest exact score:
 * an item with U < T is not among the k best and does not tie with the k-th. The items
 * with U >= T are scored exactly from an item-major float copy of the table, by the same
 * chain, and the k best taken in sr_product_topk_f32's order (score descending, then item
 * ascending): its result, bit for bit. A row the bound cannot decide (fewer than k items
 * outside the exclusions, a non-finite score, too many candidates) is flagged for the
 * exact kernel. */

#include <math.h>

#define QSTRIP 16          /* items per int8 strip: one vector of int32 sums */
#define QBLOCK 64          /* items per block of the bounds: four strips */
#define QROWS 4            /* rows scored together */
#define QCHUNK 32          /* rows whose scores are kept at once, at most */
#define BOUND_CAP 4096     /* candidates per row */

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) \
    && __GNUC__ >= 11
#include <immintrin.h>
#define HAVE_VNNI_BUILD 1
#define VNNI_KERNEL __attribute__((target("avx512f,avx512bw,avx512vnni")))
#else
#define HAVE_VNNI_BUILD 0
#endif

/* Whether this build and processor run the int8 kernel. */
EXPORT int64_t sr_int8_topk_available(void) {
#if HAVE_VNNI_BUILD
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vnni");
#else
    return 0;
#endif
}

/* Bytes of the int8 strips of K units and N items: per strip of 16 items, ceil(K / 4)
 * groups of 16 x 4 int8 (group g holds units 4g .. 4g + 3 of each item). */
EXPORT int64_t sr_int8_strips_bytes(int64_t K, int64_t N) {
    return (N + QSTRIP - 1) / QSTRIP * ((K + 3) / 4) * QSTRIP * 4;
}

/* Floats of the per-item data: s_i, |w_i|_1 (rounded up), |b_i|, b_i, then the item sums
 * of q (as floats, exact), then per block of 64 the largest s_i, |w_i|_1, |b_i|. */
EXPORT int64_t sr_int8_meta_floats(int64_t N) {
    return 5 * N + 3 * ((N + QBLOCK - 1) / QBLOCK);
}

static void pack_int8_range(const float *matrix, int64_t K1, int64_t N, int8_t *out,
                            float *rows, float *meta, int64_t lo, int64_t hi) {
    const int64_t K = K1 - 1, K4 = (K + 3) / 4, S = (N + QSTRIP - 1) / QSTRIP;
    for (int64_t s = lo; s < hi; ++s) {
        int8_t *strip = out + s * K4 * QSTRIP * 4;
        float *peak = meta + 5 * N + 3 * (s * QSTRIP / QBLOCK);
        for (int64_t c = 0; c < QSTRIP; ++c) {
            const int64_t i = s * QSTRIP + c;
            float big = 0.0f;
            double l1 = 0.0;
            for (int64_t k = 0; k < K && i < N; ++k) {
                const float w = matrix[k * N + i];
                big = fabsf(w) > big ? fabsf(w) : big;
                l1 += fabs((double)w);
                rows[i * K1 + k] = w;
            }
            const float scale = big > 0.0f ? big / 127.0f : 1.0f;
            int64_t sum = 0;
            for (int64_t k = 0; k < 4 * K4; ++k) {
                int q = 0;
                if (i < N && k < K) {
                    q = (int)lrintf(matrix[k * N + i] / scale);
                    q = q > 127 ? 127 : (q < -127 ? -127 : q);
                }
                strip[(k / 4) * QSTRIP * 4 + c * 4 + k % 4] = (int8_t)q;
                sum += q;
            }
            if (i >= N) continue;
            const float b = matrix[K * N + i];
            rows[i * K1 + K] = b;
            meta[i] = scale;
            meta[N + i] = (float)l1 * (1.0f + 1.0f / 1048576.0f);
            meta[2 * N + i] = fabsf(b);
            meta[3 * N + i] = b;
            meta[4 * N + i] = (float)sum;
            if (scale > peak[0]) peak[0] = scale;
            if (meta[N + i] > peak[1]) peak[1] = meta[N + i];
            if (fabsf(b) > peak[2]) peak[2] = fabsf(b);
        }
    }
    (void)S;
}

/* Packs the (K1 = K + 1) x N row-major matrix (weights, then biases) into int8 strips
 * (sr_int8_strips_bytes), the item-major float copy rows (N x K1) and the per-item data
 * (sr_int8_meta_floats). */
EXPORT void sr_pack_int8_strips(const float *matrix, int64_t K1, int64_t N, void *out,
                                float *rows, float *meta, int64_t n_threads) {
    const int64_t S = (N + QSTRIP - 1) / QSTRIP;
    const int64_t n_blocks = (N + QBLOCK - 1) / QBLOCK;
    for (int64_t b = 0; b < 3 * n_blocks; ++b) meta[5 * N + b] = 0.0f;
    /* Ranges of whole blocks (four strips): a block's peaks are one thread's. */
    SPLIT(S, S * K1 * QSTRIP, MIN_PARALLEL, QBLOCK / QSTRIP,
          pack_int8_range(matrix, K1, N, (int8_t *)out, rows, meta, lo, hi));
}

/* The exact chain of chosen items' scores (the lanes of sr_product_topk_f32's tiles):
 * not vectorised, which would split the multiply-adds the tiles fuse; eight independent
 * chains hide their latency. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) \
    && __GNUC__ >= 11
#define EXACT_KERNEL                                                                   \
    __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"),        \
                   optimize("fp-contract=fast", "no-tree-vectorize")))
#else
#define EXACT_KERNEL TOPK_KERNEL
#endif
static EXACT_KERNEL void exact_scores(const float *h, const float *rows, int64_t K,
                                      const int64_t *items, int64_t n, float *out) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const float *r[8];
        float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
        for (int c = 0; c < 8; ++c) r[c] = rows + items[i + c] * (K + 1);
        for (int64_t k = 0; k < K; ++k)
            for (int c = 0; c < 8; ++c) acc[c] += h[k] * r[c][k];
        for (int c = 0; c < 8; ++c) out[i + c] = acc[c] + r[c][K];
    }
    for (; i < n; ++i) {
        const float *r = rows + items[i] * (K + 1);
        float acc = 0.0f;
        for (int64_t k = 0; k < K; ++k) acc += h[k] * r[k];
        out[i] = acc + r[K];
    }
}

#if HAVE_VNNI_BUILD

/* What the selection of one row keeps. */
typedef struct {
    float *approx;      /* N scores */
    float *block_top;   /* per block: the largest approx */
    float *block_e;     /* per block: the bound e */
    int bad;            /* a non-finite score */
} QRow;

/* A row quantised: u8 (q + 128) in groups of 4, its scale, |h|_1 and |h|_inf. */
typedef struct {
    uint32_t *groups;   /* K4 words */
    float scale, l1, inf;
} QuantRow;

static void quantise_row(const float *h, int64_t K, int64_t K4, QuantRow *q) {
    float big = 0.0f;
    double l1 = 0.0;
    for (int64_t k = 0; k < K; ++k) {
        big = fabsf(h[k]) > big ? fabsf(h[k]) : big;
        l1 += fabs((double)h[k]);
    }
    if (!(l1 < 1.0e37)) big = __builtin_inff(); /* a NaN or infinite row: undecidable */
    q->scale = big > 0.0f ? big / 127.0f : 1.0f;
    q->l1 = (float)l1 * (1.0f + 1.0f / 1048576.0f);
    q->inf = big;
    for (int64_t g = 0; g < K4; ++g) {
        uint32_t word = 0;
        for (int t = 0; t < 4; ++t) {
            const int64_t k = 4 * g + t;
            int v = 0;
            if (k < K) {
                v = (int)lrintf(h[k] / q->scale);
                v = v > 127 ? 127 : (v < -127 ? -127 : v);
            }
            word |= (uint32_t)(uint8_t)(v + 128) << (8 * t);
        }
        q->groups[g] = word;
    }
}

/* Rows [0, nr) (nr <= QROWS) of a chunk, blocks [b_lo, b_hi) of 64 items: approximate
 * scores into each row's buffer, and each block's largest score and bound. */
#define QSTRIPS (QBLOCK / QSTRIP)
static VNNI_KERNEL void int8_scores(const int8_t *strips, int64_t K, int64_t N,
                                    const float *meta, const QuantRow *chunk_q,
                                    int64_t n_rows, QRow *chunk_rows, float c_g, float rel,
                                    float tiny, int64_t b_lo, int64_t b_hi) {
    const int64_t K4 = (K + 3) / 4, S = (N + QSTRIP - 1) / QSTRIP;
    const __m512 shift = _mm512_set1_ps(128.0f);
    /* Blocks outside, rows inside: a block's int8 weights (K x 64 bytes) stay in the
     * first-level cache while every row of the chunk is scored against them. */
    for (int64_t blk = b_lo; blk < b_hi; ++blk)
    for (int64_t x0 = 0; x0 < n_rows; x0 += QROWS) {
        const QuantRow *q = chunk_q + x0;
        QRow *rows = chunk_rows + x0;
        const int64_t nr = n_rows - x0 < QROWS ? n_rows - x0 : QROWS;
        const int64_t s0 = blk * QSTRIPS;
        const int64_t n_strips = S - s0 < QSTRIPS ? S - s0 : QSTRIPS;
        __m512i acc[QROWS][QSTRIPS];
        for (int r = 0; r < QROWS; ++r)
            for (int c = 0; c < QSTRIPS; ++c) acc[r][c] = _mm512_setzero_si512();
        const int8_t *base = strips + s0 * K4 * QSTRIP * 4;
        if (n_strips == QSTRIPS && nr == QROWS) {
            for (int64_t g = 0; g < K4; ++g) {
                __m512i b[QSTRIPS];
                for (int c = 0; c < QSTRIPS; ++c)
                    b[c] = _mm512_loadu_si512(
                        (const void *)(base + (c * K4 + g) * QSTRIP * 4));
                for (int r = 0; r < QROWS; ++r) {
                    const __m512i a = _mm512_set1_epi32((int)q[r].groups[g]);
                    for (int c = 0; c < QSTRIPS; ++c)
                        acc[r][c] = _mm512_dpbusd_epi32(acc[r][c], a, b[c]);
                }
            }
        } else {
            for (int64_t g = 0; g < K4; ++g)
                for (int64_t c = 0; c < n_strips; ++c) {
                    const __m512i b = _mm512_loadu_si512(
                        (const void *)(base + (c * K4 + g) * QSTRIP * 4));
                    for (int64_t r = 0; r < nr; ++r)
                        acc[r][c] = _mm512_dpbusd_epi32(
                            acc[r][c], _mm512_set1_epi32((int)q[r].groups[g]), b);
                }
        }
        const float *peak = meta + 5 * N + 3 * blk;
        __m512 s_i[QSTRIPS], b_i[QSTRIPS], shifted[QSTRIPS];
        __mmask16 in[QSTRIPS];
        for (int64_t c = 0; c < n_strips; ++c) { /* the block's items, once for all rows */
            const int64_t i0 = (s0 + c) * QSTRIP;
            const int64_t valid = N - i0 < QSTRIP ? N - i0 : QSTRIP;
            in[c] = (__mmask16)(valid == QSTRIP ? 0xffffu : (1u << valid) - 1u);
            s_i[c] = _mm512_maskz_loadu_ps(in[c], meta + i0);
            b_i[c] = _mm512_maskz_loadu_ps(in[c], meta + 3 * N + i0);
            shifted[c] = _mm512_mul_ps(shift, _mm512_maskz_loadu_ps(in[c], meta + 4 * N + i0));
        }
        for (int64_t r = 0; r < nr; ++r) {
            const float s_h = q[r].scale;
            /* |approx| <= (|h|_inf + s_h / 2)(|w|_1 + K s / 2) + |b|, from the largest of
             * the block: no score overflows, and it bounds the rounding term. */
            const float mag = (q[r].inf + 0.5f * s_h) * (peak[1] + 0.5f * (float)K * peak[0]) +
                              peak[2];
            if (!(mag < 1.0e37f)) {
                __atomic_store_n(&rows[r].bad, 1, __ATOMIC_RELAXED);
                continue;
            }
            const __m512 scale = _mm512_set1_ps(s_h);
            __m512 top = _mm512_set1_ps(-__builtin_inff());
            for (int64_t c = 0; c < n_strips; ++c) {
                const int64_t i0 = (s0 + c) * QSTRIP;
                /* sum over k of (u - 128) q = acc - 128 sum(q): exact, then float. */
                const __m512 d = _mm512_sub_ps(_mm512_cvtepi32_ps(acc[r][c]), shifted[c]);
                const __m512 a = _mm512_add_ps(_mm512_mul_ps(d, _mm512_mul_ps(scale, s_i[c])),
                                               b_i[c]);
                top = _mm512_mask_max_ps(top, in[c], top, a);
                _mm512_mask_storeu_ps(rows[r].approx + i0, in[c], a);
            }
            const float e = peak[0] * q[r].l1 * 0.5001f + s_h * peak[1] * 0.5001f +
                            0.7501f * (float)K * s_h * peak[0] +
                            c_g * (q[r].inf * peak[1] + peak[2]) + rel * (mag + peak[2]) +
                            tiny;
            rows[r].block_top[blk] = _mm512_reduce_max_ps(top);
            rows[r].block_e[blk] = e * (1.0f + 1.0f / 65536.0f);
        }
    }
}

/* The k best of one row from its approximate scores, exact; 0 if undecided. */
static VNNI_KERNEL int int8_select(const float *h, int64_t K, const QRow *row, int64_t N,
                       const float *item_rows, int64_t k, const int64_t *excl,
                       int64_t n_excl, TopHeap *lows, int64_t *cand, float *exact,
                       TopEntry *entries, int64_t *out_items, float *out_scores) {
    if (row->bad) return 0;
    float *approx = row->approx;
    for (int64_t e = 0; e < n_excl; ++e) approx[excl[e]] = -__builtin_inff();
    const int64_t n_blocks = (N + QBLOCK - 1) / QBLOCK;
    /* A first floor: each block's best item has a lower bound of at least its block's
     * largest score minus e, so k blocks' k best items have at least the k-th largest of
     * those (before exclusions, which can lower a block's best: then none). */
    float floor = -__builtin_inff();
    if (n_excl == 0 && n_blocks >= k) {
        lows->n = 0;
        for (int64_t blk = 0; blk < n_blocks; ++blk)
            topk_offer(lows, row->block_top[blk] - row->block_e[blk], blk);
        floor = lows->v[0];
    }
    lows->n = 0;
    /* T: the k-th largest lower bound a - e (e of the item's block), at least the floor. */
    for (int64_t blk = 0; blk < n_blocks; ++blk) {
        const float e = row->block_e[blk];
        const float bar = lows->n == k && lows->v[0] > floor ? lows->v[0] : floor;
        if (!(row->block_top[blk] - e >= bar)) continue;
        const int64_t end = (blk + 1) * QBLOCK < N ? (blk + 1) * QBLOCK : N;
        for (int64_t i0 = blk * QBLOCK; i0 < end; i0 += 16) {
            const __mmask16 in = (__mmask16)(end - i0 >= 16 ? 0xffffu
                                                            : (1u << (end - i0)) - 1u);
            const __m512 a = _mm512_maskz_loadu_ps(in, approx + i0);
            const __m512 low = _mm512_sub_ps(a, _mm512_set1_ps(e));
            /* -inf (excluded) lanes never reach a finite floor; while the floor is -inf
             * they are passed over below. */
            unsigned bits = _mm512_mask_cmp_ps_mask(in, low, _mm512_set1_ps(bar), _CMP_GE_OQ);
            bits &= _mm512_mask_cmp_ps_mask(in, a, _mm512_set1_ps(-__builtin_inff()),
                                            _CMP_NEQ_OQ);
            while (bits) {
                const int l = __builtin_ctz(bits);
                bits &= bits - 1;
                const float value = approx[i0 + l] - e;
                if (value >= floor && (lows->n < k || value > lows->v[0]))
                    topk_offer(lows, value, i0 + l);
            }
        }
    }
    /* Fewer than k above the floor: the floor itself is the k-th largest bound's floor. */
    const float threshold = lows->n == k ? (lows->v[0] > floor ? lows->v[0] : floor) : floor;
    if (!(threshold > -__builtin_inff())) return 0;
    /* The candidates: a + e >= T. */
    int64_t n = 0;
    for (int64_t blk = 0; blk < n_blocks; ++blk) {
        const float e = row->block_e[blk];
        if (!(row->block_top[blk] + e >= threshold)) continue;
        const int64_t end = (blk + 1) * QBLOCK < N ? (blk + 1) * QBLOCK : N;
        for (int64_t i0 = blk * QBLOCK; i0 < end; i0 += 16) {
            const __mmask16 in = (__mmask16)(end - i0 >= 16 ? 0xffffu
                                                            : (1u << (end - i0)) - 1u);
            const __m512 a = _mm512_maskz_loadu_ps(in, approx + i0);
            unsigned bits = _mm512_mask_cmp_ps_mask(
                in, _mm512_add_ps(a, _mm512_set1_ps(e)), _mm512_set1_ps(threshold),
                _CMP_GE_OQ);
            bits &= _mm512_mask_cmp_ps_mask(in, a, _mm512_set1_ps(-__builtin_inff()),
                                            _CMP_NEQ_OQ);
            while (bits) {
                if (n == BOUND_CAP) return 0;
                cand[n++] = i0 + __builtin_ctz(bits);
                bits &= bits - 1;
            }
        }
    }
    exact_scores(h, item_rows, K, cand, n, exact);
    /* The k best of the candidates: a heap (product_topk's order), then its k sorted. */
    lows->n = 0;
    for (int64_t e = 0; e < n; ++e) topk_offer(lows, exact[e], cand[e]);
    for (int64_t e = 0; e < k; ++e) entries[e] = (TopEntry){lows->v[e], lows->i[e]};
    qsort(entries, (size_t)k, sizeof(TopEntry), topk_entry_order);
    for (int64_t e = 0; e < k; ++e) {
        out_items[e] = entries[e].i;
        out_scores[e] = entries[e].v;
    }
    return 1;
}

#endif /* HAVE_VNNI_BUILD */

/* Rows scored per pass over the table (of M): up to QCHUNK, their scores within 4M
 * floats. */
static int64_t int8_chunk_rows(int64_t N, int64_t M) {
    int64_t rows = ((int64_t)1 << 22) / (N + 16) / QROWS * QROWS;
    rows = rows < QROWS ? QROWS : (rows > QCHUNK ? QCHUNK : rows);
    return M < rows ? M : rows;
}

/* Bytes of one thread's scratch for M rows of N items and lists of k. */
static int64_t int8_thread_bytes(int64_t N, int64_t K, int64_t k, int64_t M) {
    const int64_t n_blocks = (N + QBLOCK - 1) / QBLOCK, C = int8_chunk_rows(N, M);
    return (C * (4 * (N + 16) + 8 * (n_blocks + 16)) + C * 4 * ((K + 3) / 4 + 4) +
            16 * k + (8 + 4 + 16) * BOUND_CAP + 4096 + 63) / 64 * 64;
}

/* Scratch of sr_int8_topk_f32 for M rows, in bytes. */
EXPORT int64_t sr_int8_topk_scratch(int64_t M, int64_t N, int64_t K, int64_t k,
                                    int64_t n_threads) {
    return (n_threads > 1 ? n_threads : 1) * int8_thread_bytes(N, K, k, M) + 64;
}

#if HAVE_VNNI_BUILD
/* One thread's part of the scratch (int8_thread_bytes), carved: the chunk's scores and
 * block data, its quantised rows, and one row's selection buffers. */
typedef struct {
    float *approx, *blocks;
    uint32_t *groups;
    TopHeap lows;
    int64_t *cand;
    float *exact;
    TopEntry *entries;
} QScratch;

static QScratch int8_carve(char *mine, int64_t N, int64_t n_blocks, int64_t chunk_rows,
                           int64_t K4, int64_t k) {
    QScratch q;
    q.approx = (float *)mine;
    q.blocks = q.approx + chunk_rows * (N + 16);
    q.groups = (uint32_t *)(q.blocks + chunk_rows * 2 * (n_blocks + 16));
    float *low_v = (float *)(q.groups + chunk_rows * (K4 + 4));
    int64_t *low_i = (int64_t *)(low_v + 2 * k);
    q.lows = (TopHeap){low_v, low_i, 0, k};
    q.cand = low_i + k;
    q.exact = (float *)(q.cand + BOUND_CAP);
    q.entries = (TopEntry *)(q.exact + BOUND_CAP);
    return q;
}

/* Row x of a chunk: its score buffers, and its quantised form from h. */
static void int8_row(const QScratch *q, int64_t x, int64_t N, int64_t n_blocks, int64_t K,
                     int64_t K4, const float *h, QRow *row, QuantRow *quant) {
    *row = (QRow){q->approx + x * (N + 16), q->blocks + x * 2 * (n_blocks + 16),
                  q->blocks + x * 2 * (n_blocks + 16) + (n_blocks + 16), 0};
    quant->groups = q->groups + x * (K4 + 4);
    quantise_row(h, K, K4, quant);
}

/* Row r's selection (int8_select) with the buffers of q; 1 where it must fall back. */
static int64_t int8_row_falls_back(QScratch *q, const float *h, int64_t ldh, int64_t K,
                                   const QRow *row, int64_t r, int64_t N,
                                   const float *item_rows, int64_t k,
                                   const int64_t *excl_offsets, const int64_t *excl_items,
                                   int64_t *out_items, float *out_scores) {
    const int64_t *excl = excl_offsets ? excl_items + excl_offsets[r] : NULL;
    const int64_t n_excl = excl_offsets ? excl_offsets[r + 1] - excl_offsets[r] : 0;
    return !int8_select(h + r * ldh, K, row, N, item_rows, k, excl, n_excl, &q->lows,
                        q->cand, q->exact, q->entries, out_items + r * k,
                        out_scores + r * k);
}
#endif

/* The k best items of each of the M rows of h (K columns, row stride ldh) of the scores
 * [h | 1] W, as sr_product_topk_f32 gives them (same items, same float scores, same
 * order), from the int8 strips, the item-major float rows and the per-item data of
 * sr_pack_int8_strips. fallback[r] is set to 1 where row r could not be decided (nothing
 * written for it). Rows are shared between the threads, QCHUNK at a time. Returns -1 for
 * a k outside [1, min(N, BOUND_CAP)], -2 where the int8 kernel cannot run. */
EXPORT int64_t sr_int8_topk_f32(const float *h, int64_t M, int64_t K, int64_t ldh,
                                const void *strips, const float *item_rows,
                                const float *meta, int64_t N, int64_t k,
                                const int64_t *excl_offsets, const int64_t *excl_items,
                                int64_t *out_items, float *out_scores, int64_t *fallback,
                                void *scratch, int64_t n_threads) {
    if (k < 1 || k > N || k > BOUND_CAP) return -1;
#if !HAVE_VNNI_BUILD
    (void)h; (void)M; (void)K; (void)ldh; (void)strips; (void)item_rows; (void)meta;
    (void)excl_offsets; (void)excl_items; (void)out_items; (void)out_scores;
    (void)fallback; (void)scratch; (void)n_threads;
    return -2;
#else
    if (!sr_int8_topk_available()) return -2;
    const double u32 = 1.0 / 16777216.0;
    const float c_g = (float)(1.1 * (double)(K + 2) * u32 / (1.0 - (double)(K + 2) * u32));
    const float rel = (float)(8.0 * u32), tiny = (float)((double)(K + 2) * 1.2e-38);
    const int64_t K4 = (K + 3) / 4, n_blocks = (N + QBLOCK - 1) / QBLOCK;
    const int64_t chunk_rows = int8_chunk_rows(N, M);
    const int64_t n_chunks = (M + chunk_rows - 1) / chunk_rows;
    const int64_t T = n_threads > 1 && n_chunks >= 2 ?
                      (n_threads < n_chunks ? n_threads : n_chunks) : 1;
    char *base = (char *)scratch;
    base += (64 - (uintptr_t)base % 64) % 64;
    const int64_t per_thread = int8_thread_bytes(N, K, k, M);
    if (n_chunks == 1 && n_threads > 1 && n_blocks >= 64) {
        /* One chunk (a click, a few): its blocks shared between the threads, then each
         * row's selection on one, with that thread's buffers. */
        QScratch first = int8_carve(base, N, n_blocks, chunk_rows, K4, k);
        QRow rows[QCHUNK];
        QuantRow q[QCHUNK];
        for (int64_t x = 0; x < M; ++x)
            int8_row(&first, x, N, n_blocks, K, K4, h + x * ldh, rows + x, q + x);
        const int use = (int)n_threads;
#ifdef _OPENMP
#pragma omp parallel num_threads(use)
        {
            const int64_t t = omp_get_thread_num(), n_used = omp_get_num_threads();
            int64_t lo, hi;
            share(n_blocks, t, n_used, 1, &lo, &hi);
            int8_scores((const int8_t *)strips, K, N, meta, q, M, rows, c_g, rel, tiny, lo,
                        hi);
        }
#pragma omp parallel for num_threads(use) schedule(static) if (M > 1)
#endif
        for (int64_t r = 0; r < M; ++r) {
#ifdef _OPENMP
            QScratch own = int8_carve(base + omp_get_thread_num() * per_thread, N, n_blocks,
                                      chunk_rows, K4, k);
#else
            QScratch own = int8_carve(base, N, n_blocks, chunk_rows, K4, k);
#endif
            fallback[r] = int8_row_falls_back(&own, h, ldh, K, rows + r, r, N, item_rows, k,
                                              excl_offsets, excl_items, out_items,
                                              out_scores);
        }
        (void)use;
        return 0;
    }
#ifdef _OPENMP
#pragma omp parallel num_threads((int)T) if (T > 1)
#endif
    {
#ifdef _OPENMP
        const int64_t t = omp_get_thread_num();
#else
        const int64_t t = 0;
#endif
        QScratch mine = int8_carve(base + t * per_thread, N, n_blocks, chunk_rows, K4, k);
        QRow rows[QCHUNK];
        QuantRow q[QCHUNK];
        int64_t lo, hi;
        share(n_chunks, t, T, 1, &lo, &hi);
        for (int64_t chunk = lo; chunk < hi; ++chunk) {
            const int64_t r0 = chunk * chunk_rows;
            const int64_t n_rows = M - r0 < chunk_rows ? M - r0 : chunk_rows;
            for (int64_t x = 0; x < n_rows; ++x)
                int8_row(&mine, x, N, n_blocks, K, K4, h + (r0 + x) * ldh, rows + x, q + x);
            int8_scores((const int8_t *)strips, K, N, meta, q, n_rows, rows, c_g, rel, tiny,
                        0, n_blocks);
            for (int64_t x = 0; x < n_rows; ++x)
                fallback[r0 + x] = int8_row_falls_back(&mine, h, ldh, K, rows + x, r0 + x, N,
                                                       item_rows, k, excl_offsets,
                                                       excl_items, out_items, out_scores);
        }
    }
    return 0;
#endif
}
