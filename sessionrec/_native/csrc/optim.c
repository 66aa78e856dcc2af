/* Adagrad with momentum on packed tables (sparse rows and dense parameters), and the distinct rows of a step.
 *
 * Part of the fused kernels' single translation unit: included by fused.c after
 * kernels.h, in the order fused.c gives; not compiled on its own. */

static inline float root(float x) { return __builtin_sqrtf(x); }

/* Adagrad with momentum on n adjacent elements; mom may be NULL (no momentum):
 * acc += g^2; step = lr * (g / sqrt(acc)); mom = momentum * mom + step; param -= mom. */
static inline void adagrad_span(float *restrict param, float *restrict acc,
                                float *restrict mom, const float *restrict g, int64_t n,
                                float lr, float momentum) {
    if (mom) {
        for (int64_t j = 0; j < n; ++j) {
            const float a = acc[j] + g[j] * g[j];
            acc[j] = a;
            const float m = mom[j] * momentum + lr * (g[j] / root(a));
            mom[j] = m;
            param[j] = param[j] - m;
        }
    } else {
        for (int64_t j = 0; j < n; ++j) {
            const float a = acc[j] + g[j] * g[j];
            acc[j] = a;
            param[j] = param[j] - lr * (g[j] / root(a));
        }
    }
}

/* The rule on rows [lo, hi) of the list; see sr_sparse_adagrad_f32. */
static KERNEL void sparse_adagrad_range(float *buffer, int64_t n_planes, int64_t plane_stride,
                                        int64_t width, const int64_t *rows, const float *grad,
                                        const uint8_t *keep, float lr, float momentum,
                                        int64_t lo, int64_t hi) {
    for (int64_t k = lo; k < hi; ++k) {
        float *param = buffer + rows[k] * width;
        float *mom = n_planes > 2 ? param + 2 * plane_stride : 0;
        adagrad_span(param, param + plane_stride, mom, grad + k * width,
                     (keep && keep[k]) ? width - 1 : width, lr, momentum);
    }
}

static KERNEL void dense_adagrad_range(float *param, const float *grad, float *acc,
                                       float *mom, float lr, float momentum, int64_t lo,
                                       int64_t hi) {
    adagrad_span(param + lo, acc + lo, mom ? mom + lo : 0, grad + lo, hi - lo, lr, momentum);
}

/* Element-wise kernels below this many elements run on one thread. */
#define MIN_PARALLEL 16384

/* The rule on rows of a packed table [param, acc(, mom)], in place.
 * buffer: n_planes planes of plane_stride floats; row r of a plane starts at r * width.
 * rows: n distinct rows. grad: n x width (row k is the merged gradient of rows[k]).
 * keep (nullable): rows whose last column (param, accumulator and momentum) must not
 * change. */
EXPORT void sr_sparse_adagrad_f32(float *buffer, int64_t n_planes, int64_t plane_stride,
                                  int64_t width, const int64_t *rows, int64_t n,
                                  const float *grad, const uint8_t *keep, float lr,
                                  float momentum, int64_t n_threads) {
    SPLIT(n, n * width, MIN_PARALLEL, 1,
          sparse_adagrad_range(buffer, n_planes, plane_stride, width, rows, grad, keep, lr,
                               momentum, lo, hi));
}

/* The rule on every element of a flat parameter; mom may be NULL (no momentum). */
EXPORT void sr_dense_adagrad_f32(float *param, const float *grad, float *acc, float *mom,
                                 int64_t n, float lr, float momentum, int64_t n_threads) {
    SPLIT(n, n, MIN_PARALLEL, 16,
          dense_adagrad_range(param, grad, acc, mom, lr, momentum, lo, hi));
}

static int64_t bitmap_words(int64_t n_rows) { return (n_rows + 63) / 64; }

static inline int lowest_bit(uint64_t word) {
#if defined(__GNUC__)
    return __builtin_ctzll(word);
#else
    int b = 0;
    while (!(word & 1)) {
        word >>= 1;
        ++b;
    }
    return b;
#endif
}

/* Sorted distinct values of rows[0:n] (into distinct; returns their number) and each
 * element's position among them (into inverse), as torch.unique gives, with position
 * (n_rows int64, all -1) and bits (a bitmap of n_rows bits, all 0) left as they were
 * found: the rows are marked in the bitmap and read back in order, so with prepared
 * scratch a call costs a pass over n_rows / 64 words, not over the catalogue. Returns -1
 * (nothing written) when a row lies outside [0, n_rows). */
static int64_t distinct_rows(const int64_t *rows, int64_t n, int64_t n_rows,
                             int64_t *position, uint64_t *bits, int64_t *distinct,
                             int64_t *inverse) {
    for (int64_t k = 0; k < n; ++k)
        if (rows[k] < 0 || rows[k] >= n_rows) return -1;
    for (int64_t k = 0; k < n; ++k) bits[rows[k] >> 6] |= (uint64_t)1 << (rows[k] & 63);
    int64_t count = 0;
    const int64_t words = bitmap_words(n_rows);
    for (int64_t w = 0; w < words; ++w) {
        uint64_t word = bits[w];
        if (!word) continue;
        bits[w] = 0;
        while (word) {
            const int64_t r = 64 * w + lowest_bit(word);
            word &= word - 1;
            distinct[count] = r;
            position[r] = count++;
        }
    }
    for (int64_t k = 0; k < n; ++k) inverse[k] = position[rows[k]];
    for (int64_t u = 0; u < count; ++u) position[distinct[u]] = -1;
    return count;
}

/* distinct_rows for a caller without prepared scratch. scratch: n_rows + (n_rows + 63)
 * / 64 int64, prepared here (linear time in n_rows); distinct and inverse: n entries
 * each. Returns the number of distinct values, or -1 (nothing written but the scratch)
 * when a value lies outside [0, n_rows). */
/* The int64 scratch sr_unique_marked needs for rows in [0, n_rows). */
EXPORT int64_t sr_unique_marked_scratch(int64_t n_rows) {
    return n_rows + bitmap_words(n_rows);
}

EXPORT int64_t sr_unique_marked(const int64_t *rows, int64_t n, int64_t n_rows,
                                int64_t *scratch, int64_t *distinct, int64_t *inverse) {
    for (int64_t r = 0; r < n_rows; ++r) scratch[r] = -1;
    memset(scratch + n_rows, 0, (size_t)bitmap_words(n_rows) * sizeof(int64_t));
    return distinct_rows(rows, n, n_rows, scratch, (uint64_t *)(scratch + n_rows), distinct,
                         inverse);
}
