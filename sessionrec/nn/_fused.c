/* Fused CPU kernels of the training steps and of evaluation (see _kernels.py, which loads
 * this library with ctypes). Plain C with no Python API: each function makes one pass over memory where the
 * PyTorch code it replaces makes several, each with its own dispatch cost.
 *
 * Built by setup.py as an optional extension: where no C compiler is found the library
 * is missing and the PyTorch code runs instead. Compiled without floating-point
 * contraction (-ffp-contract=off) so the arithmetic is the plain IEEE sequence written
 * here, and with -fno-math-errno so that sqrtf vectorises.
 *
 * On Linux it is built with OpenMP and linked to libgomp.so.1, the name under which the
 * PyTorch wheels ship theirs: loaded after torch, the library then shares torch's thread
 * pool instead of starting a second one (_kernels.py checks that loading it mapped no
 * OpenMP runtime of its own, and asks for one thread otherwise). The kernels split their work into
 * contiguous ranges, one per thread, each element written by one thread, and reduce
 * in a fixed order afterwards: the results do not depend on the number of threads.
 */
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
/* One build runs on any x86-64 and uses AVX2 where the processor has it. */
#define KERNEL __attribute__((target_clones("avx2", "default")))
#else
#define KERNEL
#endif

#if defined(_WIN32)
#define EXPORT __declspec(dllexport)
#else
#define EXPORT __attribute__((visibility("default")))
#endif

/* Runs CALL, which reads the range [lo, hi) of [0, n), on n_threads threads, one
 * contiguous range each (rounded to multiples of ALIGN): below min_work units of work a
 * fork and join would cost more than it saves, and it runs on the calling thread. */
#ifdef _OPENMP
#define SPLIT(n, work, min_work, ALIGN, CALL)                                       \
    do {                                                                              \
        const int64_t n_ = (n);                                                       \
        const int use_ = (n_threads > 1 && (work) >= (min_work) && n_ >= 2 * (ALIGN)) \
                             ? (int)n_threads : 1;                                    \
        if (use_ == 1) {                                                              \
            const int64_t lo = 0, hi = n_;                                            \
            CALL;                                                                     \
        } else {                                                                      \
            _Pragma("omp parallel num_threads(use_)")                                 \
            {                                                                         \
                const int64_t t_ = omp_get_thread_num(), T_ = omp_get_num_threads();  \
                const int64_t lo = t_ == 0 ? 0 : n_ * t_ / T_ / (ALIGN) * (ALIGN);    \
                const int64_t hi = t_ == T_ - 1 ? n_ : n_ * (t_ + 1) / T_ / (ALIGN) * (ALIGN); \
                CALL;                                                                 \
            }                                                                         \
        }                                                                             \
    } while (0)
#else
#define SPLIT(n, work, min_work, ALIGN, CALL) \
    do {                                       \
        (void)n_threads;                       \
        const int64_t lo = 0, hi = (n);        \
        CALL;                                  \
    } while (0)
#endif

/* Whether this build can run kernels on several threads. */
EXPORT int sr_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

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
EXPORT int64_t sr_unique_marked(const int64_t *rows, int64_t n, int64_t n_rows,
                                int64_t *scratch, int64_t *distinct, int64_t *inverse) {
    for (int64_t r = 0; r < n_rows; ++r) scratch[r] = -1;
    memset(scratch + n_rows, 0, (size_t)bitmap_words(n_rows) * sizeof(int64_t));
    return distinct_rows(rows, n, n_rows, scratch, (uint64_t *)(scratch + n_rows), distinct,
                         inverse);
}

/* Eight floats at a time, with GCC/clang vector extensions: plain loops with a max or a
 * sum reduction do not vectorise without -ffast-math, which this file avoids. */
typedef float vf8 __attribute__((vector_size(32)));
typedef float vf8_unaligned __attribute__((vector_size(32), aligned(4), may_alias));
typedef int32_t vi8 __attribute__((vector_size(32)));

static inline vf8 load8(const float *p) { return *(const vf8_unaligned *)p; }
static inline void store8(float *p, vf8 v) { *(vf8_unaligned *)p = v; }
static inline vf8 splat8(float x) { return (vf8){x, x, x, x, x, x, x, x}; }
static inline vf8 max8(vf8 a, vf8 b) {
    const vi8 a_wins = a > b;
    return (vf8)((a_wins & (vi8)a) | (~a_wins & (vi8)b));
}

/* exp(x) on eight lanes (the C library's expf is a scalar call): x = k ln2 + r with
 * |r| <= ln2 / 2, exp(r) by a degree-7 minimax polynomial (Cephes' expf coefficients,
 * within 2 ulp), 2^k built in the exponent bits. Inputs are clamped to [-87, 88]: below
 * -87 (softmax terms under 1e-38, and -inf for items of weight 0) the result is a
 * denormal where exp would give one or 0, a difference no sum of such terms can see. */
static inline vf8 exp8(vf8 x) {
    x = max8(x, splat8(-87.0f));
    x = -max8(-x, splat8(-88.0f));
    const vf8 magic = splat8(12582912.0f); /* 1.5 * 2^23: adding it rounds to an integer */
    const vf8 k = (x * 1.44269504088896341f + magic) - magic;
    vf8 r = x - k * 0.693359375f;
    r = r - k * -2.12194440e-4f;
    vf8 p = splat8(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const vi8 bits = (__builtin_convertvector(k, vi8) + 127) << 23;
    return p * (vf8)bits;
}

static inline float exp1(float x) {
    vf8 v = splat8(x);
    return exp8(v)[0];
}

/* log w_u, the log of the sum of exp(s_j) over the columns j of distinct item u (-inf if
 * none; s = 0 without shift): with these weights, the softmax over the B + S columns,
 * duplicates included, equals a softmax over the distinct items (see
 * cross_entropy_distinct in _losses.py). */
static KERNEL void log_weights(float *log_weight, int64_t n_distinct,
                               const int64_t *column_of, int64_t n_cols, const float *shift) {
    for (int64_t u = 0; u < n_distinct; ++u) log_weight[u] = 0.0f;
    int64_t j = 0;
    if (shift) { /* exp(s_j) eight columns at a time, added in column order */
        for (; j + 8 <= n_cols; j += 8) {
            const vf8 e = exp8(load8(shift + j));
            for (int l = 0; l < 8; ++l) log_weight[column_of[j + l]] += e[l];
        }
    }
    for (; j < n_cols; ++j) log_weight[column_of[j]] += shift ? exp1(shift[j]) : 1.0f;
    for (int64_t u = 0; u < n_distinct; ++u) log_weight[u] = __builtin_logf(log_weight[u]);
}

static inline vf8 sigmoid8(vf8 x) { return 1.0f / (1.0f + exp8(-x)); }
/* tanh(x) = 1 - 2 / (exp(2x) + 1): absolute error within a few 1e-8. */
static inline vf8 tanh8(vf8 x) { return 1.0f - 2.0f / (exp8(x + x) + 1.0f); }

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

/* Floats of scratch sr_output_xent_f32 needs. */
EXPORT int64_t sr_output_xent_scratch(int64_t B, int64_t H, int64_t U) {
    const int64_t K = H + 1, Kp = (K + 7) / 8 * 8, n_chunks = (B + LANES - 1) / LANES;
    const int64_t n_blocks = (U + OUT_BLOCK - 1) / OUT_BLOCK;
    return n_chunks * LANES * (K + Kp + U + 2 * n_blocks + 2) + U;
}

/* h: B x H (row stride ldh), the last layer's output; table: rows of H + 1 holding each
 * item's [W_u | b_u], read where it lies (no gathered copy); row_index: the table's rows
 * of the U distinct items; column_of: the distinct item of each of n_cols columns (the
 * rows' targets first); shift: the columns' logQ corrections, or NULL. Writes out_grad
 * (U x (H + 1)) and d_h (B x H), the gradients of the mean loss; returns the loss summed
 * over rows, in the columns' space. scratch: sr_output_xent_scratch(B, H, U) floats;
 * parts: 2 * B doubles. */
EXPORT double sr_output_xent_f32(const float *h, int64_t B, int64_t H, int64_t ldh,
                                 const float *table, const int64_t *row_index, int64_t U,
                                 const int64_t *column_of,
                                 int64_t n_cols, const float *shift, float *out_grad,
                                 float *d_h, float *scratch, double *parts,
                                 int64_t n_threads) {
    OutputStep s;
    s.B = B; s.H = H; s.K = H + 1; s.Kp = (s.K + 7) / 8 * 8; s.U = U;
    s.n_chunks = (B + LANES - 1) / LANES;
    s.n_blocks = (U + OUT_BLOCK - 1) / OUT_BLOCK;
    s.table = table; s.row_index = row_index; s.column_of = column_of; s.shift = shift;
    s.out_grad = out_grad; s.d_h = d_h; s.parts = parts;
    const int64_t lanes = s.n_chunks * LANES;
    float *next = scratch;
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

/* ---- One step of a GRU layer, products included (see gru_forward in _layers.py) ----
 *
 * The forward step computes the gate inputs gi = x W_x + b (or takes them as given), the
 * gates r, z = sigmoid(gi_rz + b_h_rz + h W_rz), the candidate (the paper's
 * c = tanh(gi_c + (r * h) W_h), or the reset-after c = tanh(gi_c + r * (h W_h + b_h_c)))
 * and the new state (h + z * (c - h)) * mask; the backward step the gradients of the gate
 * inputs, of every weight and, if asked, of the layer input (no step back in time). Each
 * is one call with one fork and a few barriers, instead of the dozen PyTorch operations
 * (each a dispatch and a pass over memory) that it replaces.
 *
 * The products are register tiles of fused multiply-adds where the processor has them.
 * Threads split the columns of each product and the rows of each element-wise pass; each
 * element is written by one thread, and each product element is one chain of
 * multiply-adds in a fixed order whichever tile computes it, so the results do not depend
 * on the number of threads. The element-wise arithmetic is the plain IEEE sequence. */

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

typedef struct {
    int64_t B, I, H, ldx, ldh, ldgi;
    const float *x, *wx, *b;   /* the layer input (B x I) and its weights, or NULL */
    const float *h, *wrz, *wh, *bh, *mask;
    float *gi;                 /* B x 3H: written when x is given, else read */
    float *rz, *rec, *c, *out; /* B x 2H, B x H, B x H, B x H */
    int reset_after;
    const int64_t *gi_rows;    /* x NULL: row b's gate inputs are gi's row gi_rows[b] (NULL:
                                  row b) */
} GruForward;

/* Row b's gate inputs. */
static inline const float *gate_inputs(const GruForward *s, int64_t b) {
    return s->gi + (s->gi_rows ? s->gi_rows[b] : b) * s->ldgi;
}

/* Gates of rows [lo, hi): rz = sigmoid(gi_rz + b_h_rz + h W_rz), rz holding the product
 * on entry. The paper's GRU: rec = r * h. Reset-after (rec = h W_h + b_h_c on entry):
 * the candidate and the new state. */
static KERNEL void gru_gate_rows(const GruForward *s, int64_t lo, int64_t hi) {
    const int64_t H = s->H;
    for (int64_t b = lo; b < hi; ++b) {
        float *rz = s->rz + b * 2 * H;
        const float *gi = gate_inputs(s, b), *hb = s->h + b * s->ldh;
        RANGE_LOOP(0, 2 * H, {
            vf8 pre = load_part(gi + H + j0, width);
            if (s->bh) pre = pre + load_part(s->bh + H + j0, width);
            store_part(rz + j0, sigmoid8(pre + load_part(rz + j0, width)), width);
        })
        if (!s->reset_after) {
            RANGE_LOOP(0, H, store_part(s->rec + b * H + j0,
                                        load_part(rz + j0, width) * load_part(hb + j0, width),
                                        width);)
            continue;
        }
        RANGE_LOOP(0, H, {
            const vf8 cv = tanh8(load_part(gi + j0, width) +
                                 load_part(rz + j0, width) *
                                     load_part(s->rec + b * H + j0, width));
            store_part(s->c + b * H + j0, cv, width);
            const vf8 hv = load_part(hb + j0, width);
            vf8 next = hv + load_part(rz + H + j0, width) * (cv - hv);
            if (s->mask) next = next * load_part(s->mask + b * H + j0, width);
            store_part(s->out + b * H + j0, next, width);
        })
    }
}

/* The paper's GRU, columns [lo, hi) of every row: c = tanh(gi_c + c), c holding
 * (r * h) W_h on entry, and the new state. */
static KERNEL void gru_candidate_columns(const GruForward *s, int64_t lo, int64_t hi) {
    const int64_t H = s->H;
    for (int64_t b = 0; b < s->B; ++b) {
        const float *z = s->rz + b * 2 * H + H, *hb = s->h + b * s->ldh;
        float *c = s->c + b * H;
        RANGE_LOOP(lo, hi, {
            const vf8 cv = tanh8(load_part(gate_inputs(s, b) + j0, width) +
                                 load_part(c + j0, width));
            store_part(c + j0, cv, width);
            const vf8 hv = load_part(hb + j0, width);
            vf8 next = hv + load_part(z + j0, width) * (cv - hv);
            if (s->mask) next = next * load_part(s->mask + b * H + j0, width);
            store_part(s->out + b * H + j0, next, width);
        })
    }
}

static void gru_forward_phases(const GruForward *s, int64_t t, int64_t T) {
    const int64_t B = s->B, H = s->H;
    if (s->x) SHARED_PRODUCT(3 * H, B, s->I, s->x, s->ldx, 1, s->wx, 3 * H, s->b, s->gi, 3 * H);
    SHARED_PRODUCT(2 * H, B, H, s->h, s->ldh, 1, s->wrz, 2 * H, 0, s->rz, 2 * H);
    if (s->reset_after) SHARED_PRODUCT(H, B, H, s->h, s->ldh, 1, s->wh, H, s->bh, s->rec, H);
    BARRIER;
    int64_t lo, hi;
    share(B, t, T, 1, &lo, &hi);
    gru_gate_rows(s, lo, hi);
    if (s->reset_after) return;
    BARRIER;
    share(H, t, T, 8, &lo, &hi);
    gemm_columns(B, H, s->rec, H, 1, s->wh, H, 0, s->c, H, lo, hi);
    gru_candidate_columns(s, lo, hi);
}

/* Runs PHASES(&s, t, T) on USE threads (one: on the calling thread). */
#ifdef _OPENMP
#define RUN_PHASES(PHASES, s, USE)                                                       \
    do {                                                                                 \
        const int use_ = (int)(USE);                                                     \
        if (use_ > 1) {                                                                  \
            _Pragma("omp parallel num_threads(use_)")                                    \
            PHASES(&(s), omp_get_thread_num(), omp_get_num_threads());                   \
        } else {                                                                         \
            PHASES(&(s), 0, 1);                                                          \
        }                                                                                \
    } while (0)
#else
#define RUN_PHASES(PHASES, s, USE) PHASES(&(s), 0, 1)
#endif

/* One GRU step. x (B x I, row stride ldx) and wx (I x 3H) give the gate inputs, written
 * into gi (B x 3H) with the bias b (3H); with x NULL, gi (row stride ldgi) holds them.
 * h: B x H (row stride ldh); wrz: H x 2H; wh: H x H; bh (3H, or NULL): the recurrent
 * bias, with reset_after only; mask (B x H, or NULL): dropout. Writes rz (B x 2H), rec
 * (B x H: r * h, or h W_h + b_h_c with reset_after), c (B x H) and out (B x H). Every
 * matrix is row-major, and contiguous where no stride is given. */
EXPORT void sr_gru_forward_f32(int64_t B, int64_t I, int64_t H, const float *x, int64_t ldx,
                               const float *wx, const float *b, float *gi, int64_t ldgi,
                               const float *h, int64_t ldh, const float *wrz,
                               const float *wh, const float *bh, int64_t reset_after,
                               const float *mask, float *rz, float *rec, float *c,
                               float *out, int64_t n_threads) {
    GruForward s = {B, I, H, ldx, ldh, x ? 3 * H : ldgi, x, wx, b, h, wrz, wh, bh, mask,
                    gi, rz, rec, c, out, (int)reset_after};
    const int64_t use = n_threads > 1 && B * H >= MIN_PARALLEL_GRU ? n_threads : 1;
    RUN_PHASES(gru_forward_phases, s, use);
}

typedef struct {
    int64_t B, I, H, lddh, ldh, ldx;
    const float *dh, *mask, *rz, *c, *h, *rec, *x, *wx, *wh;
    float *dgi, *d_rec;        /* B x 3H, B x H */
    float *dwx, *db, *dwrz, *dwh, *dbh, *dx;
    int reset_after;
} GruBackward;

/* Rows [lo, hi): the gradients of the candidate's and the update gate's pre-activations
 * and, for the reset-after GRU, d_rec (the gradient of h W_h + b_h_c) and the reset
 * gate's. */
static KERNEL void gru_backward_rows(const GruBackward *s, int64_t lo, int64_t hi) {
    const int64_t H = s->H;
    for (int64_t b = lo; b < hi; ++b) {
        const float *r = s->rz + b * 2 * H, *z = r + H, *hb = s->h + b * s->ldh;
        const float *cb = s->c + b * H;
        float *d_cand = s->dgi + b * 3 * H, *d_r = d_cand + H, *d_z = d_r + H;
        RANGE_LOOP(0, H, {
            vf8 g = load_part(s->dh + b * s->lddh + j0, width);
            if (s->mask) g = g * load_part(s->mask + b * H + j0, width);
            const vf8 cv = load_part(cb + j0, width), zv = load_part(z + j0, width);
            const vf8 dc = g * zv * (1.0f - cv * cv);
            store_part(d_cand + j0, dc, width);
            store_part(d_z + j0, g * (cv - load_part(hb + j0, width)) * (zv * (1.0f - zv)),
                       width);
            if (s->reset_after) {
                const vf8 rv = load_part(r + j0, width);
                store_part(s->d_rec + b * H + j0, dc * rv, width);
                store_part(d_r + j0,
                           dc * load_part(s->rec + b * H + j0, width) * (rv * (1.0f - rv)),
                           width);
            }
        })
    }
}

/* The paper's GRU, columns [lo, hi): the reset gate's gradient from
 * d_rec = d_cand W_h^T, the gradient of r * h. */
static KERNEL void gru_reset_columns(const GruBackward *s, int64_t lo, int64_t hi) {
    const int64_t H = s->H;
    for (int64_t b = 0; b < s->B; ++b) {
        const float *r = s->rz + b * 2 * H;
        RANGE_LOOP(lo, hi, {
            const vf8 rv = load_part(r + j0, width);
            store_part(s->dgi + b * 3 * H + H + j0,
                       load_part(s->d_rec + b * H + j0, width) *
                           load_part(s->h + b * s->ldh + j0, width) * (rv * (1.0f - rv)),
                       width);
        })
    }
}

/* out[c] = sum over rows of m[:, c] in row order, for columns [lo, hi). */
static KERNEL void column_sums(const float *m, int64_t rows, int64_t ld, float *out,
                               int64_t lo, int64_t hi) {
    RANGE_LOOP(lo, hi, {
        vf8 total = splat8(0.0f);
        for (int64_t b = 0; b < rows; ++b) total = total + load_part(m + b * ld + j0, width);
        store_part(out + j0, total, width);
    })
}

static void gru_backward_phases(const GruBackward *s, int64_t t, int64_t T) {
    const int64_t B = s->B, I = s->I, H = s->H;
    int64_t lo, hi;
    share(B, t, T, 1, &lo, &hi);
    gru_backward_rows(s, lo, hi);
    BARRIER;
    if (!s->reset_after) {
        share(H, t, T, 8, &lo, &hi);
        gemm_nt_columns(B, H, s->dgi, 3 * H, s->wh, H, s->d_rec, H, lo, hi);
        gru_reset_columns(s, lo, hi);
        BARRIER;
    }
    /* weight gradients: sums over the batch's rows, A being a transposed input */
    if (s->dwx) SHARED_PRODUCT(3 * H, I, B, s->x, 1, s->ldx, s->dgi, 3 * H, 0, s->dwx, 3 * H);
    SHARED_PRODUCT(2 * H, H, B, s->h, 1, s->ldh, s->dgi + H, 3 * H, 0, s->dwrz, 2 * H);
    if (s->reset_after)
        SHARED_PRODUCT(H, H, B, s->h, 1, s->ldh, s->d_rec, H, 0, s->dwh, H);
    else
        SHARED_PRODUCT(H, H, B, s->rec, 1, H, s->dgi, 3 * H, 0, s->dwh, H);
    if (s->db) {
        share(3 * H, t, T, 8, &lo, &hi);
        column_sums(s->dgi, B, 3 * H, s->db, lo, hi);
    }
    if (s->dbh) { /* b_h_c takes part in the reset-after candidate only */
        share(H, t, T, 8, &lo, &hi);
        if (s->reset_after) column_sums(s->d_rec, B, H, s->dbh, lo, hi);
        share(2 * H, t, T, 8, &lo, &hi);
        column_sums(s->dgi + H, B, 3 * H, s->dbh + H, lo, hi);
    }
    if (s->dx) {
        share(I, t, T, 2, &lo, &hi);
        gemm_nt_columns(B, 3 * H, s->dgi, 3 * H, s->wx, 3 * H, s->dx, I, lo, hi);
    }
}

/* Gradients of one GRU step (no step back in time) from dh (B x H, row stride lddh), the
 * gradient of the step's output before its mask (NULL for none), and the forward step's
 * rz, c, h (row stride ldh) and rec. Writes dgi (B x 3H), the gradient of the gate
 * inputs, d_rec (B x H), that of rec, and the weights' gradients dwrz (H x 2H), dwh
 * (H x H), and where not NULL: db (3H) and dbh (3H; its first H only with reset_after),
 * the biases'; dwx
 * (I x 3H) = x^T dgi for the input x (B x I, row stride ldx); dx (B x I) = dgi wx^T. */
EXPORT void sr_gru_backward_f32(int64_t B, int64_t I, int64_t H, const float *dh,
                                int64_t lddh, const float *mask, const float *rz,
                                const float *c, const float *h, int64_t ldh, const float *rec,
                                int64_t reset_after, const float *x, int64_t ldx,
                                const float *wx, const float *wh, float *dgi, float *d_rec,
                                float *dwx, float *db, float *dwrz, float *dwh, float *dbh,
                                float *dx, int64_t n_threads) {
    GruBackward s = {B, I, H, lddh, ldh, ldx, dh, mask, rz, c, h, rec, x, wx, wh,
                     dgi, d_rec, dwx, db, dwrz, dwh, dbh, dx, (int)reset_after};
    const int64_t use = n_threads > 1 && B * H >= MIN_PARALLEL_GRU ? n_threads : 1;
    RUN_PHASES(gru_backward_phases, s, use);
}

/* ---- Ranks of the evaluation protocol (see ranks_from_scores in evaluation.py) ---- */

/* Rows [lo, hi): ge[r] (and gt[r] if not NULL) = the number of columns whose score is
 * >= (>) the score of column targets[r]. NaN scores never count. */
static KERNEL void rank_count_rows(const float *scores, int64_t n, int64_t ld,
                                   const int64_t *targets, double *ge, double *gt,
                                   int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
        const float *row = scores + r * ld;
        const float t = row[targets[r]];
        const vf8 tv = splat8(t);
        vi8 n_ge = {0, 0, 0, 0, 0, 0, 0, 0}, n_gt = n_ge;
        int64_t j = 0;
        for (; j + 8 <= n; j += 8) { /* a true comparison is -1 in its lane */
            const vf8 v = load8(row + j);
            n_ge -= (vi8)(v >= tv);
            if (gt) n_gt -= (vi8)(v > tv);
        }
        int64_t count_ge = 0, count_gt = 0;
        for (int l = 0; l < 8; ++l) {
            count_ge += n_ge[l];
            count_gt += n_gt[l];
        }
        for (; j < n; ++j) {
            count_ge += row[j] >= t;
            count_gt += row[j] > t;
        }
        ge[r] = (double)count_ge;
        if (gt) gt[r] = (double)count_gt;
    }
}

/* scores: rows x n (row stride ld); targets: each row's target column. Returns -1
 * (nothing written) when a target lies outside [0, n), else 0. */
EXPORT int64_t sr_rank_counts_f32(const float *scores, int64_t rows, int64_t n, int64_t ld,
                                  const int64_t *targets, double *ge, double *gt,
                                  int64_t n_threads) {
    for (int64_t r = 0; r < rows; ++r)
        if (targets[r] < 0 || targets[r] >= n) return -1;
    SPLIT(rows, rows * n, MIN_PARALLEL, 1,
          rank_count_rows(scores, n, ld, targets, ge, gt, lo, hi));
    return 0;
}

/* Ranks straight from a product: the scores of rows [lo, hi) of hd (row stride ldhd)
 * are hd W + bias (W: K x N, row-major), computed 32 rows at a time into buf (32 x N)
 * and counted there, so the score matrix never leaves the cache. Row d's scores are
 * counted for each of the targets order[offsets[d]:offsets[d + 1]], whose target score
 * is written out too. */
static void product_rank_rows(const float *hd, int64_t ldhd, int64_t K, const float *w,
                              const float *bias, int64_t N, const int64_t *offsets,
                              const int64_t *order, const int64_t *targets, double *ge,
                              double *gt, float *target_score, float *buf, int64_t lo,
                              int64_t hi) {
    for (int64_t d0 = lo; d0 < hi; d0 += 32) {
        const int64_t m = hi - d0 < 32 ? hi - d0 : 32;
        gemm_columns(m, K, hd + d0 * ldhd, ldhd, 1, w, N, bias, buf, N, 0, N);
        for (int64_t x = 0; x < m; ++x)
            for (int64_t k = offsets[d0 + x]; k < offsets[d0 + x + 1]; ++k) {
                const int64_t r = order[k];
                rank_count_rows(buf + x * N, N, N, targets + r, ge + r, gt ? gt + r : 0,
                                0, 1);
                target_score[r] = buf[x * N + targets[r]];
            }
    }
}

/* Slots of a hash table of up to M keys: a power of two, at least 2 M. */
static int64_t row_table_size(int64_t M) {
    int64_t size = 16;
    while (size < 2 * M) size *= 2;
    return size;
}

static uint64_t row_hash(const uint32_t *word, int64_t K) {
    uint64_t lane[4] = {0x9E3779B97F4A7C15ull, 0xC2B2AE3D27D4EB4Full, 0x165667B19E3779F9ull,
                        0x27D4EB2F165667C5ull};
    for (int64_t k = 0; k < K; ++k) { /* four independent chains, then mixed */
        uint64_t *x = lane + (k & 3);
        *x = (*x ^ word[k]) * 0xFF51AFD7ED558CCDull;
        *x ^= *x >> 32;
    }
    return (lane[0] ^ (lane[1] * 31) ^ (lane[2] * 961) ^ (lane[3] * 29791)) *
           0xC4CEB9FE1A85EC53ull;
}

/* Lists the n members of each of D groups (group[r] in [0, D)) as order[offsets[d]:
 * offsets[d + 1]], in increasing order: a counting sort. */
static void sort_by_group(const int64_t *group, int64_t n, int64_t D, int64_t *offsets,
                          int64_t *order) {
    memset(offsets, 0, (size_t)(D + 1) * sizeof(int64_t));
    for (int64_t r = 0; r < n; ++r) ++offsets[group[r] + 1];
    for (int64_t d = 0; d < D; ++d) offsets[d + 1] += offsets[d];
    for (int64_t r = 0; r < n; ++r) order[offsets[group[r]]++] = r;
    for (int64_t d = D; d > 0; --d) offsets[d] = offsets[d - 1];
    offsets[0] = 0;
}

/* The groups of the M rows of h (row stride ldh) that are equal bit for bit: each
 * group's first row is copied into hd (D x K, in order of first appearance) and row r's
 * group written into group[r]. table: row_table_size(M) int64. Returns D. */
static int64_t group_equal_rows(const float *h, int64_t M, int64_t K, int64_t ldh,
                                float *hd, int64_t *table, int64_t *group) {
    const int64_t size = row_table_size(M);
    for (int64_t s = 0; s < size; ++s) table[s] = -1;
    int64_t D = 0;
    for (int64_t r = 0; r < M; ++r) {
        const float *row = h + r * ldh;
        int64_t s = (int64_t)(row_hash((const uint32_t *)row, K) & (uint64_t)(size - 1));
        for (;; s = (s + 1) & (size - 1)) { /* linear probing; D <= M < size */
            const int64_t d = table[s];
            if (d < 0) {
                table[s] = D;
                memcpy(hd + D * K, row, (size_t)K * sizeof(float));
                group[r] = D++;
                break;
            }
            if (memcmp(hd + d * K, row, (size_t)K * sizeof(float)) == 0) {
                group[r] = d;
                break;
            }
        }
    }
    return D;
}

/* Scratch sr_product_ranks_f32 needs for M rows of K columns, N items and n_targets
 * targets: floats (returned) and int64 (into *n_index). With row_of (the caller maps
 * the targets to rows), no table and no copy of the rows. */
EXPORT int64_t sr_product_ranks_scratch(int64_t M, int64_t K, int64_t N, int64_t n_targets,
                                        int64_t row_of, int64_t n_threads,
                                        int64_t *n_index) {
    *n_index = (row_of ? 0 : row_table_size(M) + n_targets) + M + 1 + n_targets;
    return 32 * N * (n_threads > 1 ? n_threads : 1) + (row_of ? 0 : M * K);
}

/* For each of n_targets targets: the number of the N items whose score h W + bias (h:
 * M rows, row stride ldh, K columns; W: K x N row-major; bias: N) is >= (into ge) and,
 * if gt is not NULL, > (into gt) the score of its target item targets[r], which goes
 * into target_score. NaN scores never count. Target r is scored with row row_of[r] of
 * h; with row_of NULL, row r (then n_targets == M), and rows equal bit for bit share one
 * computation of their scores (an evaluation walk gives every session that starts with
 * the same item the same first state). scratch and index: what sr_product_ranks_scratch
 * asks for. Returns -1 (nothing written) when a target lies outside [0, N) or a row
 * outside [0, M), else 0. */
EXPORT int64_t sr_product_ranks_f32(const float *h, int64_t M, int64_t K, int64_t ldh,
                                    const float *w, const float *bias, int64_t N,
                                    const int64_t *targets, const int64_t *row_of,
                                    int64_t n_targets, double *ge, double *gt,
                                    float *target_score, float *scratch, int64_t *index,
                                    int64_t n_threads) {
    for (int64_t r = 0; r < n_targets; ++r)
        if (targets[r] < 0 || targets[r] >= N || (row_of && (row_of[r] < 0 || row_of[r] >= M)))
            return -1;
    const int64_t T = n_threads > 1 ? n_threads : 1;
    const float *hd = h;
    int64_t D = M, ldhd = ldh, *offsets = index, *order = offsets + M + 1;
    if (!row_of) {
        int64_t *table = order + n_targets, *group = table + row_table_size(M);
        float *packed = scratch + 32 * N * T;
        D = group_equal_rows(h, M, K, ldh, packed, table, group);
        hd = packed;
        ldhd = K;
        row_of = group;
    }
    sort_by_group(row_of, n_targets, D, offsets, order);
#ifdef _OPENMP
    const int use = n_threads > 1 && D >= 64 ? (int)n_threads : 1;
    if (use > 1) {
#pragma omp parallel num_threads(use)
        {
            const int64_t t = omp_get_thread_num(), n_used = omp_get_num_threads();
            int64_t lo, hi;
            share(D, t, n_used, 4, &lo, &hi); /* in whole tiles of 4 rows */
            product_rank_rows(hd, ldhd, K, w, bias, N, offsets, order, targets, ge, gt,
                              target_score, scratch + t * 32 * N, lo, hi);
        }
        return 0;
    }
#endif
    product_rank_rows(hd, ldhd, K, w, bias, N, offsets, order, targets, ge, gt,
                      target_score, scratch, 0, D);
    return 0;
}

/* ---- The prefix tree of an evaluation walk ----
 *
 * Ranking the next items of a set of sessions needs the state after each prefix of each
 * session; equal prefixes give equal states. Walking the tree of distinct prefixes level
 * by level (the prefixes of length 1, then 2, ...) computes each state once: 30% of
 * rsc15-100k's test prefixes repeat an earlier one, most of them a session's first
 * item. */

static uint64_t pair_hash(int64_t parent, int64_t item) {
    uint64_t x = (uint64_t)parent * 0x9E3779B97F4A7C15ull ^ (uint64_t)item * 0xC2B2AE3D27D4EB4Full;
    x ^= x >> 31;
    x *= 0xFF51AFD7ED558CCDull;
    return x ^ (x >> 29);
}

/* int64 scratch sr_prefix_tree needs for n_fed prefixes. */
EXPORT int64_t sr_prefix_tree_scratch(int64_t n_fed) { return row_table_size(n_fed) + 3 * n_fed; }

/* The distinct prefixes of sessions [s0, s1) of an events array (session s holds
 * items[offsets[s]:offsets[s + 1]]): every event but its session's last ends a prefix
 * (n_fed of them). Nodes are numbered level by level (level L: the prefixes of L + 1
 * items), in order of first appearance within a level. Writes node_of (n_fed: each
 * prefix's node, in event order), parent (each node's prefix without its last item, -1
 * on level 0), item (each node's last item) and level_offsets (level L holds nodes
 * level_offsets[L]:level_offsets[L + 1]; room for the longest session's length values),
 * the number of levels into *n_levels, and returns the number of nodes. index:
 * sr_prefix_tree_scratch(n_fed) int64. */
EXPORT int64_t sr_prefix_tree(const int64_t *items, const int64_t *offsets, int64_t s0,
                              int64_t s1, int64_t *node_of, int64_t *parent, int64_t *item,
                              int64_t *level_offsets, int64_t *n_levels, int64_t *index) {
    int64_t n_fed = 0;
    for (int64_t s = s0; s < s1; ++s) /* a session may be empty (its items unknown) */
        n_fed += offsets[s + 1] - offsets[s] > 1 ? offsets[s + 1] - offsets[s] - 1 : 0;
    const int64_t size = row_table_size(n_fed);
    /* Nodes in order of creation first: their parent, item and level. */
    int64_t *table = index, *first_parent = table + size, *first_item = first_parent + n_fed,
            *level = first_item + n_fed;
    for (int64_t k = 0; k < size; ++k) table[k] = -1;
    int64_t n = 0, k = 0, levels = 0;
    for (int64_t s = s0; s < s1; ++s) {
        int64_t above = -1;
        for (int64_t p = offsets[s]; p < offsets[s + 1] - 1; ++p) {
            const int64_t it = items[p];
            int64_t slot = (int64_t)(pair_hash(above, it) & (uint64_t)(size - 1)), node;
            for (;; slot = (slot + 1) & (size - 1)) { /* linear probing; n <= n_fed < size */
                node = table[slot];
                if (node < 0) {
                    node = table[slot] = n++;
                    first_parent[node] = above;
                    first_item[node] = it;
                    level[node] = p - offsets[s];
                    levels = level[node] + 1 > levels ? level[node] + 1 : levels;
                    break;
                }
                if (first_parent[node] == above && first_item[node] == it) break;
            }
            node_of[k++] = node;
            above = node;
        }
    }
    /* Renumber level by level (a counting sort of the nodes by level, stable). */
    memset(level_offsets, 0, (size_t)(levels + 1) * sizeof(int64_t));
    for (int64_t v = 0; v < n; ++v) ++level_offsets[level[v] + 1];
    for (int64_t l = 0; l < levels; ++l) level_offsets[l + 1] += level_offsets[l];
    int64_t *renamed = table; /* the table is no longer needed */
    for (int64_t v = 0; v < n; ++v) renamed[v] = level_offsets[level[v]]++;
    for (int64_t l = levels; l > 0; --l) level_offsets[l] = level_offsets[l - 1];
    level_offsets[0] = 0;
    for (int64_t v = 0; v < n; ++v) {
        parent[renamed[v]] = first_parent[v] < 0 ? -1 : renamed[first_parent[v]];
        item[renamed[v]] = first_item[v];
    }
    for (int64_t j = 0; j < n_fed; ++j) node_of[j] = renamed[node_of[j]];
    *n_levels = levels;
    return n;
}

/* Floats of work sr_gru_tree_walk_f32 needs for steps of at most max_width nodes. */
EXPORT int64_t sr_gru_tree_walk_scratch(int64_t n_layers, const int64_t *sizes,
                                        int64_t max_width) {
    int64_t total = 0;
    for (int64_t l = 0; l < n_layers; ++l) total += 8 * max_width * sizes[l];
    return total;
}

/* The states of a prefix tree (sr_prefix_tree) through GRU4Rec's layers, level by level:
 * one GRU step per layer for every max_width nodes of a level (sr_gru_forward_f32's
 * phases), the state of a node's parent (zero on level 0) and its item's row of
 * gate_table (n_items x 3 sizes[0]: the first layer's x W_x + b per item) in. Layers:
 * sizes, layout (per layer: input width, then the offsets of wx, wrz, wh, b and bh in
 * dense, -1 where absent) and reset_after, as in Gru4recStep. state: per layer, n_nodes
 * rows of sizes[l], written. work: sr_gru_tree_walk_scratch(n_layers, sizes, max_width)
 * floats. Returns -1 (nothing written) when an item lies outside the catalogue, else 0. */
EXPORT int64_t sr_gru_tree_walk_f32(int64_t n_layers, const int64_t *sizes,
                                    const int64_t *layout, const int64_t *reset_after,
                                    const float *dense, const float *gate_table,
                                    int64_t n_items, const int64_t *level_offsets,
                                    int64_t n_levels, const int64_t *parent,
                                    const int64_t *item, float *const *state,
                                    int64_t max_width, float *work, int64_t n_threads) {
    const int64_t L = n_layers, n_nodes = level_offsets[n_levels];
    for (int64_t v = 0; v < n_nodes; ++v)
        if (item[v] < 0 || item[v] >= n_items) return -1;
    for (int64_t level = 0; level < n_levels; ++level) {
        for (int64_t first = level_offsets[level]; first < level_offsets[level + 1];
             first += max_width) {
            const int64_t rest = level_offsets[level + 1] - first;
            const int64_t B = rest < max_width ? rest : max_width;
            float *part = work;
            for (int64_t l = 0; l < L; ++l) {
                const int64_t *at = layout + 6 * l, units = sizes[l], block = B * units;
                float *h = part + 7 * block; /* the parents' states */
                for (int64_t b = 0; b < B; ++b) {
                    const int64_t above = parent[first + b];
                    if (above < 0)
                        memset(h + b * units, 0, (size_t)units * sizeof(float));
                    else
                        memcpy(h + b * units, state[l] + above * units,
                               (size_t)units * sizeof(float));
                }
                GruForward s = {B, at[0], units, at[0], units, 3 * units,
                                l ? state[l - 1] + first * at[0] : 0, l ? dense + at[1] : 0,
                                l ? dense + at[4] : 0, h, dense + at[2], dense + at[3],
                                at[5] >= 0 ? dense + at[5] : 0, 0,
                                l ? part + 4 * block : (float *)gate_table, part,
                                part + 2 * block, part + 3 * block, state[l] + first * units,
                                (int)reset_after[l], l ? 0 : item + first};
                const int64_t use = n_threads > 1 && block >= MIN_PARALLEL_GRU ? n_threads : 1;
                RUN_PHASES(gru_forward_phases, s, use);
                part += 8 * max_width * units;
            }
        }
    }
    return 0;
}

/* ---- A whole GRU4Rec training step with the linear cross-entropy ----
 *
 * The step of GRU4RecNetwork.train_step (_network.py) for the linear cross-entropy (the
 * official default), with any of its inputs: the output rows (constrained embedding, the
 * default), a table of embeddings, or one-hot (a table of the first layer's gate
 * inputs). It is made of the kernels above in the same order on the same values, so it
 * trains bit for bit like the Python step that calls them one by one; what it saves is
 * the Python and PyTorch dispatch between them (about 40 small operations, a third of a
 * step's time on two cores). */

typedef struct {
    int64_t n_items, n_layers, n_sample, samples_int32, max_batch, n_threads;
    const int64_t *sizes;       /* units of each layer */
    const int64_t *layout;      /* per layer: input width, then the offsets of wx, wrz, wh,
                                   b and bh in the flat weight buffers (-1: none) */
    const int64_t *reset_after; /* per layer */
    float *table;               /* the packed output table: n_planes planes [param, acc(,
                                   mom)] of plane_stride floats, rows of H + 1 */
    int64_t n_planes, plane_stride;
    float *dense, *grad, *acc, *mom; /* flat GRU weights, gradient, Adagrad state (mom:
                                        NULL without momentum) */
    int64_t n_dense;
    const float *shift_batch, *shift_sample; /* per-item logQ shifts, or NULL */
    double lr, momentum;
    int64_t *index;             /* sr_gru4rec_step_scratch's first count of int64, prepared
                                   by sr_gru4rec_step_init */
    float *work;                /* its second count of floats */
    double *parts;              /* 2 * max_batch */
    uint8_t *keep_bias;         /* 2 * max_batch + n_sample */
    int64_t input_mode;         /* 0: the output rows (constrained), 1: a table of
                                   embeddings, 2: one-hot (a table of gate inputs) */
    float *in_table;            /* modes 1 and 2: the packed input table, like table */
    int64_t in_planes, in_plane_stride, in_width;
} Gru4recStep;

static int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }

/* Layer l's part of the layers' scratch: 8 max_batch H_l floats. */
static float *layer_state(const Gru4recStep *p, float *layer_work, int64_t l) {
    for (int64_t k = 0; k < l; ++k) layer_work += round16(8 * p->max_batch * p->sizes[k]);
    return layer_work;
}

static int64_t widest_input(const Gru4recStep *p) {
    int64_t most = 0;
    for (int64_t l = 0; l < p->n_layers; ++l)
        most = p->layout[6 * l] > most ? p->layout[6 * l] : most;
    return most;
}

/* Scratch of a plan, split into its parts (any pointer may be NULL); returns the floats
 * the parts take. Every part is sized for max_batch rows, the most any step has. */
static int64_t step_scratch(const Gru4recStep *p, float **x, float **layer_work,
                            float **out_grad, float **d_h, float **xent, float **shift,
                            float **back, float **dx, float **merged) {
    const int64_t B = p->max_batch, L = p->n_layers, H = p->sizes[L - 1];
    int64_t most_units = 0, layers = 0;
    for (int64_t l = 0; l < L; ++l) {
        const int64_t units = p->sizes[l];
        most_units = units > most_units ? units : most_units;
        layers += round16(8 * B * units); /* the kernel's state (7 B H), then the output */
    }
    int64_t U = 2 * B + p->n_sample;
    U = U < p->n_items ? U : p->n_items;
    const int64_t sizes[9] = {round16(B * p->layout[0]), layers, round16(U * (H + 1)),
                              round16(B * H), round16(sr_output_xent_scratch(B, H, U)),
                              round16(B + p->n_sample), round16(4 * B * most_units),
                              2 * round16(B * widest_input(p)),
                              p->input_mode ? round16(B * p->in_width) : 0};
    float **parts[9] = {x, layer_work, out_grad, d_h, xent, shift, back, dx, merged};
    int64_t total = 0;
    for (int k = 0; k < 9; ++k) {
        if (parts[k]) *parts[k] = p->work + total;
        total += sizes[k];
    }
    return total;
}

/* Scratch a plan needs: int64 (into *n_index) and floats (returned). The int64 scratch
 * holds a position per item; the step's touched, distinct and inverse rows; the inputs'
 * distinct and inverse rows; then a bitmap of the items. sr_gru4rec_step_init prepares
 * it. */
EXPORT int64_t sr_gru4rec_step_scratch(Gru4recStep *p, int64_t *n_index) {
    *n_index = p->n_items + 3 * (2 * p->max_batch + p->n_sample) + 2 * p->max_batch +
               bitmap_words(p->n_items);
    float *saved = p->work;
    p->work = 0;
    const int64_t total = step_scratch(p, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    p->work = saved;
    return total;
}

/* Positions -1 and an empty bitmap, as every step leaves them. */
EXPORT void sr_gru4rec_step_init(Gru4recStep *p) {
    int64_t n_index;
    sr_gru4rec_step_scratch(p, &n_index);
    const int64_t words = bitmap_words(p->n_items);
    for (int64_t k = 0; k < n_index - words; ++k) p->index[k] = -1;
    memset(p->index + n_index - words, 0, (size_t)words * sizeof(int64_t));
}

/* One training step on B slots (B <= max_batch): items and targets (B each), samples
 * (n_sample, int32 or int64 as the plan says, or NULL for none), keep (B: 0 where a
 * session starts, else 1; NULL: none starts), hidden (n_layers pointers to B x H_l
 * states, updated in place), embed_mask (B x H, or NULL) and masks (n_layers pointers,
 * or NULL: no hidden dropout). Writes the summed loss, rounded to float as the Python
 * step returns it, into *loss and returns 0, or -1 (nothing changed) when an item lies
 * outside the catalogue. */
EXPORT int64_t sr_gru4rec_step_f32(const Gru4recStep *p, int64_t B, const int64_t *items,
                                   const int64_t *targets, const void *samples,
                                   const float *keep, float *const *hidden,
                                   const float *embed_mask, const float *const *masks,
                                   double *loss) {
    const int64_t L = p->n_layers, H = p->sizes[L - 1], K = H + 1, nt = p->n_threads;
    const int constrained = p->input_mode == 0, onehot = p->input_mode == 2;
    const int64_t S = samples ? p->n_sample : 0, n_cols = B + S;
    const int64_t n_touch = constrained ? B + n_cols : n_cols;
    const float lr = (float)p->lr, momentum = (float)p->momentum;
    float *x, *layer_work, *out_grad, *d_h, *xent, *shift, *back, *dx, *merged;
    step_scratch(p, &x, &layer_work, &out_grad, &d_h, &xent, &shift, &back, &dx, &merged);
    const int64_t most_touched = 2 * p->max_batch + p->n_sample;
    int64_t *touched = p->index + p->n_items, *distinct = touched + most_touched;
    int64_t *inverse = distinct + most_touched, *in_distinct = inverse + most_touched;
    int64_t *in_inverse = in_distinct + p->max_batch;
    uint64_t *bits = (uint64_t *)(in_inverse + p->max_batch);

    /* The output rows the step touches: the inputs' when they are the embedding, then
     * the columns (targets, then samples); and their distinct rows. */
    int64_t *columns = constrained ? touched + B : touched;
    for (int64_t b = 0; b < B; ++b) {
        if (constrained) touched[b] = items[b];
        columns[b] = targets[b];
    }
    for (int64_t s = 0; s < S; ++s)
        columns[B + s] = p->samples_int32 ? (int64_t)((const int32_t *)samples)[s]
                                          : ((const int64_t *)samples)[s];
    const int64_t U = distinct_rows(touched, n_touch, p->n_items, p->index, bits, distinct,
                                    inverse);
    if (U < 0) return -1;
    const int64_t *column_of = constrained ? inverse + B : inverse;
    int64_t n_in = 0; /* the inputs' distinct rows of their own table */
    if (!constrained) {
        n_in = distinct_rows(items, B, p->n_items, p->index, bits, in_distinct, in_inverse);
        if (n_in < 0) return -1;
    }

    if (keep) { /* reset the slots whose session starts here */
        for (int64_t l = 0; l < L; ++l) {
            const int64_t units = p->sizes[l];
            for (int64_t b = 0; b < B; ++b)
                for (int64_t j = 0; j < units; ++j) hidden[l][b * units + j] *= keep[b];
        }
    }
    if (!onehot) { /* the input: the items' output weights, or their embeddings */
        const int64_t width = p->layout[0], stride = constrained ? K : width;
        const float *source = constrained ? p->table : p->in_table;
        for (int64_t b = 0; b < B; ++b) {
            const float *row = source + items[b] * stride;
            for (int64_t j = 0; j < width; ++j)
                x[b * width + j] = embed_mask ? row[j] * embed_mask[b * width + j] : row[j];
        }
    }

    /* Forward through the layers; layer l keeps [rz | rec | c | gi] (7 B H_l), then its
     * output (B H_l), in its part of layer_work (layer_state). */
    const float *in = x;
    for (int64_t l = 0; l < L; ++l) {
        const int64_t *at = p->layout + 6 * l, I = at[0], units = p->sizes[l];
        const int64_t block = B * units;
        float *state = layer_state(p, layer_work, l);
        const float *bh = at[5] >= 0 ? p->dense + at[5] : 0, *mask = masks ? masks[l] : 0;
        if (l == 0 && onehot) { /* gate inputs: the items' rows of the table, plus b */
            float *gi = state + 4 * block;
            const float *bias = p->dense + at[4];
            for (int64_t b = 0; b < B; ++b) {
                const float *row = p->in_table + items[b] * p->in_width;
                for (int64_t j = 0; j < 3 * units; ++j) gi[b * 3 * units + j] = row[j] + bias[j];
            }
            sr_gru_forward_f32(B, 0, units, 0, 0, 0, 0, gi, 3 * units, hidden[l], units,
                               p->dense + at[2], p->dense + at[3], bh, p->reset_after[l], mask,
                               state, state + 2 * block, state + 3 * block, state + 7 * block,
                               nt);
        } else {
            sr_gru_forward_f32(B, I, units, in, I, p->dense + at[1], p->dense + at[4],
                               state + 4 * block, 0, hidden[l], units, p->dense + at[2],
                               p->dense + at[3], bh, p->reset_after[l], mask, state,
                               state + 2 * block, state + 3 * block, state + 7 * block, nt);
        }
        in = state + 7 * block;
    }
    const float *top = in;

    /* The output layer over the distinct rows, with the columns' logQ shifts. */
    float *shifts = 0;
    if (p->shift_batch) {
        shifts = shift;
        for (int64_t b = 0; b < B; ++b) shifts[b] = p->shift_batch[targets[b]];
        for (int64_t s = 0; s < S; ++s) shifts[B + s] = p->shift_sample[columns[B + s]];
    }
    const double total = sr_output_xent_f32(top, B, H, H, p->table, distinct, U, column_of,
                                            n_cols, shifts, out_grad, d_h, xent, p->parts, nt);

    /* Backward through the layers, top-down (no step back in time); each layer's input
     * gradient goes into the half of dx the layer above did not use. */
    const float *d = d_h;
    const int64_t dx_half = round16(p->max_batch * widest_input(p));
    for (int64_t l = L - 1; l >= 0; --l) {
        const int64_t *at = p->layout + 6 * l, I = at[0], units = p->sizes[l];
        const int64_t block = B * units;
        const int fed = !(l == 0 && onehot); /* a layer fed by a vector through wx */
        float *d_x = dx + ((L - 1 - l) % 2) * dx_half, *state = layer_state(p, layer_work, l);
        const float *layer_in = l == 0 ? x : layer_state(p, layer_work, l - 1) +
                                                 7 * B * p->sizes[l - 1];
        sr_gru_backward_f32(B, I, units, d, units, masks ? masks[l] : 0, state,
                            state + 3 * block, hidden[l], units, state + 2 * block,
                            p->reset_after[l], fed ? layer_in : 0, I,
                            fed ? p->dense + at[1] : 0, p->dense + at[3], back,
                            back + 3 * block, fed ? p->grad + at[1] : 0, p->grad + at[4],
                            p->grad + at[2], p->grad + at[3],
                            at[5] >= 0 ? p->grad + at[5] : 0, fed ? d_x : 0, nt);
        d = d_x;
    }
    /* the input's gradient: of the embedding (writable, in dx), or of the gate inputs */
    float *in_grad = onehot ? back : dx + ((L - 1) % 2) * dx_half;
    if (embed_mask)
        for (int64_t k = 0; k < B * p->layout[0]; ++k) in_grad[k] *= embed_mask[k];

    /* Updates, after every gradient is known: the GRU weights, then the item tables. */
    sr_dense_adagrad_f32(p->dense, p->grad, p->acc, p->mom, p->n_dense, lr, momentum, nt);
    if (constrained) {
        /* the inputs' gradients added to their rows' weights (in row order, as index_add_
         * does), and the bias left alone on rows touched only as inputs */
        for (int64_t b = 0; b < B; ++b) {
            float *row = out_grad + inverse[b] * K;
            for (int64_t j = 0; j < H; ++j) row[j] += in_grad[b * H + j];
        }
        for (int64_t u = 0; u < U; ++u) p->keep_bias[u] = 1;
        for (int64_t c = 0; c < n_cols; ++c) p->keep_bias[column_of[c]] = 0;
    } else {
        /* the inputs' gradients merged per distinct input row, in row order */
        const int64_t width = p->in_width;
        for (int64_t k = 0; k < n_in * width; ++k) merged[k] = 0.0f;
        for (int64_t b = 0; b < B; ++b) {
            float *row = merged + in_inverse[b] * width;
            for (int64_t j = 0; j < width; ++j) row[j] += in_grad[b * width + j];
        }
        sr_sparse_adagrad_f32(p->in_table, p->in_planes, p->in_plane_stride, width,
                              in_distinct, n_in, merged, 0, lr, momentum, nt);
    }
    sr_sparse_adagrad_f32(p->table, p->n_planes, p->plane_stride, K, distinct, U, out_grad,
                          constrained ? p->keep_bias : 0, lr, momentum, nt);

    /* The new states, after the backward pass read the old ones. */
    for (int64_t l = 0; l < L; ++l) {
        const int64_t block = B * p->sizes[l];
        memcpy(hidden[l], layer_state(p, layer_work, l) + 7 * block,
               (size_t)block * sizeof(float));
    }
    *loss = (double)(float)total;
    return 0;
}

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
