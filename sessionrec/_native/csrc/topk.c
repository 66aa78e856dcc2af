/* The k best items of each row of a product, without the score matrix (predictions and
 * live sessions).
 *
 * Part of the fused kernels' single translation unit: included by fused.c after
 * kernels.h, in the order fused.c gives; not compiled on its own.
 *
 * The scores are [h | 1] W, W the (K + 1) x N output table (weights, then the biases in
 * the last row), read from a packed copy: strips of TOPK_STRIP columns, each strip's
 * K + 1 rows of TOPK_STRIP floats contiguous (sr_pack_strips), so that a row of h
 * streams through memory once per call instead of striding across K rows of N floats.
 * Every score is the same chain as the other products of this library (gemm_columns):
 * acc = 0, acc += h[k] w[k] for k in order (fused multiply-adds where the processor has
 * them), then acc + bias. So a score does not depend on how many rows are scored at
 * once, on the tile that computes it or on the number of threads: one click scored
 * alone and the same click in a batch get the same scores bit for bit, and the ranks
 * counted by sr_product_ranks_f32 come from the same values.
 *
 * Order: score descending, ties by item ascending; NaN scores count as -inf. */

#include <stdlib.h>

#define TOPK_STRIP 64
#define TOPK_ROWS 6 /* rows of a tile: 24 accumulators of 16 lanes */

typedef float vf16 __attribute__((vector_size(64)));
typedef int32_t vi16 __attribute__((vector_size(64)));
typedef float vf16_unaligned __attribute__((vector_size(64), aligned(4), may_alias));
#define V16LOAD(p) ((vf16)(*(const vf16_unaligned *)(p)))
#define V16STORE(p, v) (*(vf16_unaligned *)(p) = (v))
#define V16SPLAT(x) ({ const float x16_ = (x); (vf16){x16_, x16_, x16_, x16_, x16_, x16_, \
    x16_, x16_, x16_, x16_, x16_, x16_, x16_, x16_, x16_, x16_}; })

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) \
    && __GNUC__ >= 11
/* AVX-512 where the processor has it (16 lanes per instruction), else AVX2: both with
 * fused multiply-adds, so both give the chain of gemm_columns' FMA clone. */
#define TOPK_KERNEL                                                                    \
    __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"),        \
                   optimize("fp-contract=fast")))
#else
#define TOPK_KERNEL GEMM_KERNEL
#endif

/* Scores of NR rows of h (row stride ldh) for one packed strip (K + 1 rows of
 * TOPK_STRIP floats), written to out (NR x TOPK_STRIP). */
#define TOPK_TILE(NR)                                                                    \
    do {                                                                                 \
        vf16 acc[NR][4];                                                                 \
        for (int x = 0; x < NR; ++x)                                                     \
            for (int y = 0; y < 4; ++y) acc[x][y] = V16SPLAT(0.0f);                      \
        const float *bk = strip;                                                         \
        for (int64_t k = 0; k < K; ++k, bk += TOPK_STRIP) {                              \
            vf16 bv[4];                                                                  \
            for (int y = 0; y < 4; ++y) bv[y] = V16LOAD(bk + 16 * y);                    \
            for (int x = 0; x < NR; ++x) {                                               \
                const vf16 av = V16SPLAT(rows[x * ldh + k]);                             \
                for (int y = 0; y < 4; ++y) acc[x][y] += av * bv[y];                     \
            }                                                                            \
        }                                                                                \
        for (int x = 0; x < NR; ++x)                                                     \
            for (int y = 0; y < 4; ++y)                                                  \
                V16STORE(out + x * TOPK_STRIP + 16 * y, acc[x][y] + V16LOAD(bk + 16 * y)); \
    } while (0)

/* A min-heap of a row's best entries so far, the worst (lowest score; of equal scores,
 * the highest item) at its root. */
typedef struct {
    float *v;
    int64_t *i;
    int64_t n, k;
} TopHeap;

static inline int topk_worse(float va, int64_t ia, float vb, int64_t ib) {
    return va < vb || (va == vb && ia > ib);
}

static inline __attribute__((always_inline)) void topk_sift_down(TopHeap *h, int64_t at) {
    for (;;) {
        int64_t worst = at, l = 2 * at + 1, r = l + 1;
        if (l < h->n && topk_worse(h->v[l], h->i[l], h->v[worst], h->i[worst])) worst = l;
        if (r < h->n && topk_worse(h->v[r], h->i[r], h->v[worst], h->i[worst])) worst = r;
        if (worst == at) return;
        const float tv = h->v[at];
        const int64_t ti = h->i[at];
        h->v[at] = h->v[worst], h->i[at] = h->i[worst];
        h->v[worst] = tv, h->i[worst] = ti;
        at = worst;
    }
}

/* Offers (value, item) to the heap; NaN counts as -inf. */
static inline __attribute__((always_inline)) void topk_offer(TopHeap *h, float value,
                                                             int64_t item) {
    if (value != value) value = -__builtin_inff();
    if (h->n < h->k) { /* filling: sift up */
        int64_t at = h->n++;
        while (at > 0) {
            const int64_t up = (at - 1) / 2;
            if (!topk_worse(value, item, h->v[up], h->i[up])) break;
            h->v[at] = h->v[up], h->i[at] = h->i[up];
            at = up;
        }
        h->v[at] = value, h->i[at] = item;
        return;
    }
    if (topk_worse(value, item, h->v[0], h->i[0]) ||
        (value == h->v[0] && item == h->i[0]))
        return;
    h->v[0] = value, h->i[0] = item;
    topk_sift_down(h, 0);
}

static inline __attribute__((always_inline)) vf16 topk_max16(vf16 a, vf16 b) {
    const vi16 a_wins = a > b;
    return (vf16)((a_wins & (vi16)a) | (~a_wins & (vi16)b));
}

/* The largest of a vector's sixteen lanes (NaN lanes may be passed over). */
static inline __attribute__((always_inline)) float topk_lane_max(vf16 m) {
    m = topk_max16(m, __builtin_shuffle(m, (vi16){8, 9, 10, 11, 12, 13, 14, 15,
                                                  0, 1, 2, 3, 4, 5, 6, 7}));
    m = topk_max16(m, __builtin_shuffle(m, (vi16){4, 5, 6, 7, 0, 1, 2, 3,
                                                  12, 13, 14, 15, 8, 9, 10, 11}));
    m = topk_max16(m, __builtin_shuffle(m, (vi16){2, 3, 0, 1, 6, 7, 4, 5,
                                                  10, 11, 8, 9, 14, 15, 12, 13}));
    return m[0] > m[1] ? m[0] : m[1];
}

/* Offers one row's scores of a strip (columns c0 .. c0 + width - 1). Once the heap is
 * full, only a score strictly above its root can enter (items come in increasing
 * order): a strip, then each sixteen of its scores, is passed over at once when its
 * largest score is not above the root. */
static inline __attribute__((always_inline)) void topk_offer_strip(TopHeap *h,
                                                                   const float *scores,
                                                                   int64_t c0,
                                                                   int64_t width) {
    int64_t j = 0;
    for (; j < width && h->n < h->k; ++j) topk_offer(h, scores[j], c0 + j);
    if (j == 0 && width == TOPK_STRIP) {
        const vf16 q[4] = {V16LOAD(scores), V16LOAD(scores + 16), V16LOAD(scores + 32),
                           V16LOAD(scores + 48)};
        const vf16 all = topk_max16(topk_max16(q[0], q[1]), topk_max16(q[2], q[3]));
        if (!(topk_lane_max(all) > h->v[0])) return;
        for (int y = 0; y < 4; ++y) {
            if (!(topk_lane_max(q[y]) > h->v[0])) continue;
            for (int l = 0; l < 16; ++l)
                if (scores[16 * y + l] > h->v[0]) topk_offer(h, scores[16 * y + l], c0 + 16 * y + l);
        }
        return;
    }
    for (; j < width; ++j)
        if (scores[j] > h->v[0]) topk_offer(h, scores[j], c0 + j);
}

/* One packed strip for rows r0 .. r0 + nr - 1 (nr <= TOPK_ROWS): their scores into buf, the
 * rows' excluded items of the strip set to -inf, each row's scores offered to its heap. */
static TOPK_KERNEL void topk_strip_rows(const float *h, int64_t r0, int64_t nr, int64_t ldh,
                                        int64_t K, const float *strip, int64_t c0,
                                        int64_t width, const int64_t *excl_offsets,
                                        const int64_t *excl_items, int64_t *cursor,
                                        TopHeap *heaps, float *buf) {
    const float *rows = h + r0 * ldh;
    float *out = buf;
    switch (nr) {
    case 6: TOPK_TILE(6); break;
    case 5: TOPK_TILE(5); break;
    case 4: TOPK_TILE(4); break;
    case 3: TOPK_TILE(3); break;
    case 2: TOPK_TILE(2); break;
    default: TOPK_TILE(1); break;
    }
    for (int64_t x = 0; x < nr; ++x) {
        const int64_t r = r0 + x;
        float *scores = buf + x * TOPK_STRIP;
        if (excl_offsets)
            for (; cursor[r] < excl_offsets[r + 1] && excl_items[cursor[r]] < c0 + width;
                 ++cursor[r])
                scores[excl_items[cursor[r]] - c0] = -__builtin_inff();
        topk_offer_strip(heaps + r, scores, c0, width);
    }
}

/* C = A W + bias (A: M x K, row stride lda; W: K x N and C: M x N, row-major; bias: N
 * or NULL), by gemm_columns: each element the chain of every product of this library,
 * so a row of C equals bit for bit what a GRU step computes for that row alone (an
 * evaluation walk's table of the first layer's gate inputs per item). */
EXPORT void sr_linear_f32(const float *A, int64_t M, int64_t K, int64_t lda, const float *W,
                          int64_t N, const float *bias, float *C, int64_t n_threads) {
    SPLIT(N, M * N * K, MIN_PARALLEL, 8,
          gemm_columns(M, K, A, lda, 1, W, N, bias, C, N, lo, hi));
}

/* Packs the (K1 = K + 1) x N row-major matrix into strips: out[s][k][c] = matrix[k][s *
 * TOPK_STRIP + c], zero past column N. out: sr_packed_strip_floats(K1, N) floats. */
EXPORT int64_t sr_packed_strip_floats(int64_t K1, int64_t N) {
    return (N + TOPK_STRIP - 1) / TOPK_STRIP * K1 * TOPK_STRIP;
}

EXPORT void sr_pack_strips_f32(const float *matrix, int64_t K1, int64_t N, float *out,
                               int64_t n_threads) {
    const int64_t S = (N + TOPK_STRIP - 1) / TOPK_STRIP;
    SPLIT(S, S * K1 * TOPK_STRIP, MIN_PARALLEL, 1, {
        for (int64_t s = lo; s < hi; ++s) {
            const int64_t c0 = s * TOPK_STRIP;
            const int64_t w = N - c0 < TOPK_STRIP ? N - c0 : TOPK_STRIP;
            float *dst = out + s * K1 * TOPK_STRIP;
            for (int64_t k = 0; k < K1; ++k) {
                memcpy(dst + k * TOPK_STRIP, matrix + k * N + c0, (size_t)w * sizeof(float));
                for (int64_t c = w; c < TOPK_STRIP; ++c) dst[k * TOPK_STRIP + c] = 0.0f;
            }
        }
    });
}

/* Strips [s_lo, s_hi) for all M rows, into the heaps heaps[0 .. M). */
static void topk_strips(const float *h, int64_t M, int64_t K, int64_t ldh,
                        const float *packed, int64_t N, const int64_t *excl_offsets,
                        const int64_t *excl_items, int64_t s_lo, int64_t s_hi,
                        TopHeap *heaps, int64_t *cursor, float *buf) {
    const int64_t K1 = K + 1;
    if (excl_offsets) /* each row's first excluded item at or after the range */
        for (int64_t r = 0; r < M; ++r) {
            int64_t a = excl_offsets[r], b = excl_offsets[r + 1];
            const int64_t c_lo = s_lo * TOPK_STRIP;
            while (a < b) {
                const int64_t mid = a + (b - a) / 2;
                if (excl_items[mid] < c_lo) a = mid + 1; else b = mid;
            }
            cursor[r] = a;
        }
    for (int64_t s = s_lo; s < s_hi; ++s) {
        const float *strip = packed + s * K1 * TOPK_STRIP;
        const int64_t c0 = s * TOPK_STRIP;
        const int64_t width = N - c0 < TOPK_STRIP ? N - c0 : TOPK_STRIP;
        for (int64_t r0 = 0; r0 < M; r0 += TOPK_ROWS)
            topk_strip_rows(h, r0, M - r0 < TOPK_ROWS ? M - r0 : TOPK_ROWS, ldh, K, strip, c0, width,
                            excl_offsets, excl_items, cursor, heaps, buf);
    }
}

typedef struct {
    float v;
    int64_t i;
} TopEntry;

static int topk_entry_order(const void *pa, const void *pb) {
    const TopEntry *a = pa, *b = pb;
    if (topk_worse(b->v, b->i, a->v, a->i)) return -1; /* a better: first */
    if (topk_worse(a->v, a->i, b->v, b->i)) return 1;
    return 0;
}

/* Floats of one thread's part of the scratch: a tile's scores, then per row its heap's
 * values and items (int64: two floats each) and its cursor into the exclusions; a
 * multiple of 16 so that every part stays aligned. */
static int64_t topk_thread_floats(int64_t M, int64_t k) {
    return (TOPK_ROWS * TOPK_STRIP + M * k + 1 + 2 * M * k + 2 * M + 15) / 16 * 16;
}

/* Scratch of sr_product_topk_f32, in floats. */
EXPORT int64_t sr_product_topk_scratch(int64_t M, int64_t k, int64_t n_threads) {
    return (n_threads > 1 ? n_threads : 1) * topk_thread_floats(M, k);
}

/* For each of the M rows of h (K columns, row stride ldh): the k best items (k <= N) of
 * the scores [h | 1] W (packed by sr_pack_strips_f32; N items) into out_items and
 * out_scores (M x k, best first). Row r's excluded items excl_items[excl_offsets[r] ..
 * excl_offsets[r + 1]) (sorted ascending, within [0, N); excl_offsets NULL: none) score
 * -inf. The columns are shared between the threads, each keeping its own heaps, merged
 * in the fixed order above. Returns -1 (nothing written) for a k outside [1, N]. */
EXPORT int64_t sr_product_topk_f32(const float *h, int64_t M, int64_t K, int64_t ldh,
                                   const float *packed, int64_t N, int64_t k,
                                   const int64_t *excl_offsets, const int64_t *excl_items,
                                   int64_t *out_items, float *out_scores, float *scratch,
                                   int64_t n_threads) {
    if (k < 1 || k > N) return -1;
    const int64_t S = (N + TOPK_STRIP - 1) / TOPK_STRIP;
    int64_t T = n_threads > 1 ? n_threads : 1;
    if (M * N < 32768 || S < 2 * T) T = 1;
    const int64_t per_thread = topk_thread_floats(M, k);
    TopHeap *all = (TopHeap *)malloc((size_t)(T * M) * sizeof(TopHeap));
    if (!all) return -2;
#ifdef _OPENMP
#pragma omp parallel num_threads((int)T) if (T > 1)
#endif
    {
#ifdef _OPENMP
        const int64_t t = omp_get_thread_num();
#else
        const int64_t t = 0;
#endif
        float *mine = scratch + t * per_thread;
        float *buf = mine;
        float *values = buf + TOPK_ROWS * TOPK_STRIP;
        int64_t *items = (int64_t *)(values + M * k + (M * k & 1));
        int64_t *cursor = items + M * k;
        TopHeap *heaps = all + t * M;
        for (int64_t r = 0; r < M; ++r)
            heaps[r] = (TopHeap){values + r * k, items + r * k, 0, k};
        int64_t lo, hi;
        share(S, t, T, 1, &lo, &hi);
        topk_strips(h, M, K, ldh, packed, N, excl_offsets, excl_items, lo, hi, heaps,
                    cursor, buf);
    }
    TopEntry *merged = (TopEntry *)malloc((size_t)(T * k) * sizeof(TopEntry));
    if (!merged) {
        free(all);
        return -2;
    }
    for (int64_t r = 0; r < M; ++r) {
        int64_t n = 0;
        for (int64_t t = 0; t < T; ++t) {
            const TopHeap *hp = all + t * M + r;
            for (int64_t e = 0; e < hp->n; ++e) merged[n++] = (TopEntry){hp->v[e], hp->i[e]};
        }
        qsort(merged, (size_t)n, sizeof(TopEntry), topk_entry_order);
        for (int64_t e = 0; e < k; ++e) {
            out_items[r * k + e] = merged[e].i;
            out_scores[r * k + e] = merged[e].v;
        }
    }
    free(merged);
    free(all);
    return 0;
}
