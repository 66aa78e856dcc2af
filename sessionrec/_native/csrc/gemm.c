/* Register-tiled matrix products and the work sharing of the GRU kernels.
 *
 * Part of the fused kernels' single translation unit: included by fused.c after
 * kernels.h, in the order fused.c gives; not compiled on its own. */

/* Rows are processed eight lanes at a time; a row's last, partial group of its columns
 * [lo, hi) goes through a zero-padded copy. */
#define RANGE_LOOP(LO, HI, ...)                                                \
    for (int64_t j0 = (LO); j0 < (HI); j0 += 8) {                              \
        const int64_t width = (HI) - j0 < 8 ? (HI) - j0 : 8;                   \
        __VA_ARGS__                                                            \
    }

static inline vf8 load_part(const float *p, int64_t width) {
    if (width == 8) return load8(p);
    vf8 v = splat8(0.0f);
    for (int64_t l = 0; l < width; ++l) v[l] = p[l];
    return v;
}
static inline void store_part(float *p, vf8 v, int64_t width) {
    if (width == 8) { store8(p, v); return; }
    for (int64_t l = 0; l < width; ++l) p[l] = v[l];
}

/* The GRU steps run on several threads from this many batch rows x units. */
#define MIN_PARALLEL_GRU 2048

/* Range [lo, hi) of [0, n) for thread t of T, cut at multiples of align. */
static inline void share(int64_t n, int64_t t, int64_t T, int64_t align, int64_t *lo,
                         int64_t *hi) {
    *lo = t == 0 ? 0 : n * t / T / align * align;
    *hi = t == T - 1 ? n : n * (t + 1) / T / align * align;
}

#ifdef _OPENMP
#define BARRIER _Pragma("omp barrier")
#else
#define BARRIER
#endif

/* C[r, c0:c0+8*NV] for rows r..r+NR-1: one accumulator chain per element over k. */
#define MM_TILE(NR, NV)                                                                  \
    do {                                                                                 \
        vf8 acc[NR][NV];                                                                 \
        for (int x = 0; x < NR; ++x)                                                     \
            for (int y = 0; y < NV; ++y) acc[x][y] = VSPLAT(0.0f);                       \
        const float *a = A + r * ars, *bk = Bm + c0;                                     \
        for (int64_t k = 0; k < K; ++k, bk += ldb) {                                     \
            vf8 bv[NV];                                                                  \
            for (int y = 0; y < NV; ++y) bv[y] = VLOAD(bk + 8 * y);                      \
            for (int x = 0; x < NR; ++x) {                                               \
                const vf8 av = VSPLAT(a[x * ars + k * aks]);                             \
                for (int y = 0; y < NV; ++y) acc[x][y] += av * bv[y];                    \
            }                                                                            \
        }                                                                                \
        for (int x = 0; x < NR; ++x)                                                     \
            for (int y = 0; y < NV; ++y)                                                 \
                VSTORE(C + (r + x) * ldc + c0 + 8 * y,                                   \
                       bias ? acc[x][y] + VLOAD(bias + c0 + 8 * y) : acc[x][y]);         \
    } while (0)

/* The last w < 8 columns of a product with at least 8: the tile of the 8 columns that end
 * there, of which only the last w are stored (the others are computed the same way by the
 * tile that stores them). */
#define MM_TAIL(NR)                                                                      \
    do {                                                                                 \
        vf8 acc[NR];                                                                     \
        for (int x = 0; x < NR; ++x) acc[x] = VSPLAT(0.0f);                              \
        const float *a = A + r * ars, *bk = Bm + c_hi - 8;                               \
        for (int64_t k = 0; k < K; ++k, bk += ldb) {                                     \
            const vf8 bv = VLOAD(bk);                                                    \
            for (int x = 0; x < NR; ++x) acc[x] += VSPLAT(a[x * ars + k * aks]) * bv;    \
        }                                                                                \
        for (int x = 0; x < NR; ++x)                                                     \
            for (int64_t e = 8 - w; e < 8; ++e)                                          \
                C[(r + x) * ldc + c_hi - 8 + e] =                                        \
                    bias ? acc[x][e] + bias[c_hi - 8 + e] : acc[x][e];                   \
    } while (0)

/* The same for products narrower than 8 columns, through zero-padded copies of B. */
#define MM_PART(NR)                                                                      \
    do {                                                                                 \
        vf8 acc[NR];                                                                     \
        for (int x = 0; x < NR; ++x) acc[x] = VSPLAT(0.0f);                              \
        const float *a = A + r * ars, *bk = Bm + c0;                                     \
        for (int64_t k = 0; k < K; ++k, bk += ldb) {                                     \
            vf8 bv = VSPLAT(0.0f);                                                       \
            for (int64_t e = 0; e < w; ++e) bv[e] = bk[e];                               \
            for (int x = 0; x < NR; ++x) acc[x] += VSPLAT(a[x * ars + k * aks]) * bv;    \
        }                                                                                \
        for (int x = 0; x < NR; ++x)                                                     \
            for (int64_t e = 0; e < w; ++e)                                              \
                C[(r + x) * ldc + c0 + e] = bias ? acc[x][e] + bias[c0 + e] : acc[x][e]; \
    } while (0)

/* C[r, c] = sum_k A(r, k) B[k, c] (+ bias[c]) for rows [0, M) and columns [c_lo, c_hi),
 * with A(r, k) = A[r * ars + k * aks] (a row-major matrix, or the transpose of one), B
 * and C row-major with row strides ldb and ldc. Column strips of 16 go down all rows
 * while the strip of B stays in the first-level cache. */
static GEMM_KERNEL void gemm_columns(int64_t M, int64_t K, const float *A, int64_t ars,
                                     int64_t aks, const float *Bm, int64_t ldb,
                                     const float *bias, float *C, int64_t ldc, int64_t c_lo,
                                     int64_t c_hi) {
    int64_t c0 = c_lo;
    for (; c0 + 16 <= c_hi; c0 += 16) {
        int64_t r = 0;
        for (; r + 4 <= M; r += 4) MM_TILE(4, 2);
        for (; r < M; ++r) MM_TILE(1, 2);
    }
    for (; c0 + 8 <= c_hi; c0 += 8) {
        int64_t r = 0;
        for (; r + 4 <= M; r += 4) MM_TILE(4, 1);
        for (; r < M; ++r) MM_TILE(1, 1);
    }
    if (c0 < c_hi) {
        const int64_t w = c_hi - c0;
        int64_t r = 0;
        if (c_hi >= 8) {
            for (; r + 4 <= M; r += 4) MM_TAIL(4);
            for (; r < M; ++r) MM_TAIL(1);
        } else {
            for (; r + 4 <= M; r += 4) MM_PART(4);
            for (; r < M; ++r) MM_PART(1);
        }
    }
}

/* C[r, c0 + y] = sum_k A[r + x, k] Bt[c0 + y, k] for an NR x NC tile: both operands are
 * read along k, eight lanes at a time (the last, partial group through zero-padded
 * copies); each element's lanes are then added in a fixed order. */
#define NT_TILE(NR, NC)                                                                  \
    do {                                                                                 \
        vf8 acc[NR][NC];                                                                 \
        for (int x = 0; x < NR; ++x)                                                     \
            for (int y = 0; y < NC; ++y) acc[x][y] = VSPLAT(0.0f);                       \
        int64_t k = 0;                                                                   \
        for (; k + 8 <= K; k += 8) {                                                     \
            vf8 bv[NC];                                                                  \
            for (int y = 0; y < NC; ++y) bv[y] = VLOAD(Bt + (c0 + y) * ldbt + k);        \
            for (int x = 0; x < NR; ++x) {                                               \
                const vf8 av = VLOAD(A + (r + x) * lda + k);                             \
                for (int y = 0; y < NC; ++y) acc[x][y] += av * bv[y];                    \
            }                                                                            \
        }                                                                                \
        if (k < K) {                                                                     \
            vf8 bv[NC];                                                                  \
            for (int y = 0; y < NC; ++y) {                                               \
                bv[y] = VSPLAT(0.0f);                                                    \
                for (int64_t e = k; e < K; ++e) bv[y][e - k] = Bt[(c0 + y) * ldbt + e];  \
            }                                                                            \
            for (int x = 0; x < NR; ++x) {                                               \
                vf8 av = VSPLAT(0.0f);                                                   \
                for (int64_t e = k; e < K; ++e) av[e - k] = A[(r + x) * lda + e];         \
                for (int y = 0; y < NC; ++y) acc[x][y] += av * bv[y];                    \
            }                                                                            \
        }                                                                                \
        for (int x = 0; x < NR; ++x)                                                     \
            for (int y = 0; y < NC; ++y) {                                               \
                const vf8 v = acc[x][y];                                                 \
                C[(r + x) * ldc + c0 + y] =                                              \
                    ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));   \
            }                                                                            \
    } while (0)

/* C[r, c] = sum_k A[r, k] Bt[c, k] (a product with a transposed matrix) for rows [0, M)
 * and columns [c_lo, c_hi); A, Bt and C row-major with row strides lda, ldbt, ldc. */
static GEMM_KERNEL void gemm_nt_columns(int64_t M, int64_t K, const float *A, int64_t lda,
                                        const float *Bt, int64_t ldbt, float *C, int64_t ldc,
                                        int64_t c_lo, int64_t c_hi) {
    int64_t c0 = c_lo;
    for (; c0 + 2 <= c_hi; c0 += 2) {
        int64_t r = 0;
        for (; r + 4 <= M; r += 4) NT_TILE(4, 2);
        for (; r < M; ++r) NT_TILE(1, 2);
    }
    for (; c0 < c_hi; ++c0) {
        int64_t r = 0;
        for (; r + 4 <= M; r += 4) NT_TILE(4, 1);
        for (; r < M; ++r) NT_TILE(1, 1);
    }
}

/* Columns [lo, hi) of a product split between the threads, for thread t of T. */
#define SHARED_PRODUCT(N, M, K, A, ars, aks, Bm, ldb, bias, C, ldc)                      \
    do {                                                                                 \
        int64_t lo_, hi_;                                                                \
        share((N), t, T, 8, &lo_, &hi_);                                                 \
        gemm_columns((M), (K), (A), (ars), (aks), (Bm), (ldb), (bias), (C), (ldc), lo_,  \
                     hi_);                                                               \
    } while (0)
