/* Fused CPU kernels of the training step (see _kernels.py, which loads this library with
 * ctypes). Plain C with no Python API: each function makes one pass over memory where the
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

/* Sorted distinct values of rows[0:n] and each element's position among them, by
 * marking: linear time. position: scratch of n_rows int64. distinct and inverse: n
 * entries each. Returns the number of distinct values, or -1 (nothing written but the
 * scratch) when a value lies outside [0, n_rows). */
EXPORT int64_t sr_unique_marked(const int64_t *rows, int64_t n, int64_t n_rows,
                                int64_t *position, int64_t *distinct, int64_t *inverse) {
    for (int64_t k = 0; k < n; ++k) {
        if (rows[k] < 0 || rows[k] >= n_rows) return -1;
    }
    for (int64_t r = 0; r < n_rows; ++r) position[r] = -1;
    for (int64_t k = 0; k < n; ++k) position[rows[k]] = 0;
    int64_t count = 0;
    for (int64_t r = 0; r < n_rows; ++r) {
        if (position[r] == 0) {
            distinct[count] = r;
            position[r] = count++;
        }
    }
    for (int64_t k = 0; k < n; ++k) inverse[k] = position[rows[k]];
    return count;
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
static inline float hmax8(vf8 v) {
    float top = v[0];
    for (int l = 1; l < 8; ++l) top = v[l] > top ? v[l] : top;
    return top;
}
static inline float hsum8(vf8 v) {
    return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
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

/* Rows [lo, hi) of sr_sampled_xent_f32, given log_weight; parts[2i], parts[2i + 1]: row
 * i's two terms of the loss. */
static KERNEL void xent_range(float *scores, int64_t rows, int64_t n_distinct,
                              const int64_t *column_of, const float *shift,
                              const float *log_weight, double *parts, int64_t lo,
                              int64_t hi) {
    const float scale = 1.0f / (float)rows;
    const int64_t body = n_distinct - n_distinct % 8;
    for (int64_t i = lo; i < hi; ++i) {
        float *row = scores + i * n_distinct;
        const int64_t target = column_of[i];
        vf8 lanes = splat8(-__builtin_inff());
        for (int64_t j = 0; j < body; j += 8) {
            const vf8 v = load8(row + j) + load8(log_weight + j);
            store8(row + j, v);
            lanes = max8(v, lanes);
        }
        float top = hmax8(lanes);
        for (int64_t j = body; j < n_distinct; ++j) {
            row[j] += log_weight[j];
            top = row[j] > top ? row[j] : top;
        }
        const float target_logit = row[target] - top;
        vf8 sums = splat8(0.0f);
        for (int64_t j = 0; j < body; j += 8) {
            const vf8 e = exp8(load8(row + j) - top);
            store8(row + j, e);
            sums += e;
        }
        float total = hsum8(sums);
        for (int64_t j = body; j < n_distinct; ++j) {
            row[j] = exp1(row[j] - top);
            total += row[j];
        }
        parts[2 * i] = (double)(__builtin_logf(total) - target_logit);
        const float factor = scale / total;
        for (int64_t j = 0; j < n_distinct; ++j) row[j] *= factor;
        row[target] -= scale;
        parts[2 * i + 1] = (double)log_weight[target] - (shift ? (double)shift[i] : 0.0);
    }
}

static KERNEL void log_weights(float *log_weight, int64_t n_distinct,
                               const int64_t *column_of, int64_t n_cols, const float *shift) {
    for (int64_t u = 0; u < n_distinct; ++u) log_weight[u] = 0.0f;
    for (int64_t j = 0; j < n_cols; ++j)
        log_weight[column_of[j]] += shift ? exp1(shift[j]) : 1.0f;
    for (int64_t u = 0; u < n_distinct; ++u) log_weight[u] = __builtin_logf(log_weight[u]);
}

/* Sampled softmax cross-entropy over distinct items (the linear cross-entropy of a
 * training step; see cross_entropy_distinct in _losses.py for the algebra).
 * scores: rows x n_distinct, row-major, overwritten by the gradient of the mean loss.
 * column_of: the distinct item of each of n_cols columns (the rows' targets first).
 * shift: the columns' logQ corrections, or NULL. Scratch: log_weight, n_distinct floats;
 * parts, 2 * rows doubles (the rows' terms, summed in order at the end).
 * Returns the loss summed over rows, in the columns' space:
 * sum_i [logsumexp_j(r_ij + s_j) - (r_i,target + s_i)]. */
EXPORT double sr_sampled_xent_f32(float *scores, int64_t rows, int64_t n_distinct,
                                  const int64_t *column_of, int64_t n_cols,
                                  const float *shift, float *log_weight, double *parts,
                                  int64_t n_threads) {
    /* log w_u = log of the sum of exp(s_j) over the columns j of item u (-inf if none). */
    log_weights(log_weight, n_distinct, column_of, n_cols, shift);
    SPLIT(rows, rows * n_distinct, MIN_PARALLEL, 1,
          xent_range(scores, rows, n_distinct, column_of, shift, log_weight, parts, lo, hi));
    double loss = 0.0;
    for (int64_t k = 0; k < 2 * rows; ++k) loss += parts[k];
    return loss;
}

static inline vf8 sigmoid8(vf8 x) { return 1.0f / (1.0f + exp8(-x)); }
/* tanh(x) = 1 - 2 / (exp(2x) + 1): absolute error within a few 1e-8. */
static inline vf8 tanh8(vf8 x) { return 1.0f - 2.0f / (exp8(x + x) + 1.0f); }

/* Element-wise parts of one GRU step (see gru_forward and gru_backward in _layers.py).
 * Matrices are row-major with the given row strides (ld*). Rows are processed eight
 * lanes at a time; a row's last, partial group goes through a zero-padded copy. */
#define ROW_LOOP(H, ...)                                                      \
    for (int64_t j0 = 0; j0 < (H); j0 += 8) {                                  \
        const int64_t width = (H) - j0 < 8 ? (H) - j0 : 8;                     \
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

/* The GRU kernels split the batch's rows between threads above this many elements: their
 * per-element work (exponentials) is heavier than the optimiser's. */
#define MIN_PARALLEL_GRU 2048

/* Gates: rz (B x 2H, contiguous) = sigmoid(rz) in place; for the paper's GRU also
 * rec = r * h (B x H, contiguous), the input of the candidate's recurrent product.
 * The *_rows functions do rows [lo, hi) of the batch. */
static KERNEL void gru_gates_rows(float *rz, int64_t H, const float *h, int64_t ldh,
                                  float *rec, int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) {
        float *gates = rz + b * 2 * H;
        ROW_LOOP(2 * H, store_part(gates + j0, sigmoid8(load_part(gates + j0, width)), width);)
        if (rec) {
            ROW_LOOP(H, store_part(rec + b * H + j0,
                                   load_part(gates + j0, width) *
                                       load_part(h + b * ldh + j0, width),
                                   width);)
        }
    }
}

EXPORT void sr_gru_gates_f32(float *rz, int64_t B, int64_t H, const float *h, int64_t ldh,
                             float *rec, int64_t n_threads) {
    SPLIT(B, B * H, MIN_PARALLEL_GRU, 1, gru_gates_rows(rz, H, h, ldh, rec, lo, hi));
}

/* Candidate and new state: c (B x H, contiguous) holds the candidate's pre-activation
 * (the paper's GRU) or, with rec_after (reset-after GRU: rec_after = h W_h + b_h_c),
 * becomes tanh(gi_c + r * rec_after); then out (B x H, contiguous) =
 * (h + z * (c - h)) * mask. mask may be NULL. */
static KERNEL void gru_candidate_rows(float *c, int64_t H, const float *h, int64_t ldh,
                                      const float *rz, const float *gi, int64_t ldgi,
                                      const float *rec_after, const float *mask, float *out,
                                      int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) {
        float *cand = c + b * H;
        const float *r = rz + b * 2 * H, *z = r + H, *hb = h + b * ldh;
        ROW_LOOP(H, {
            vf8 pre = load_part(cand + j0, width);
            if (rec_after)
                pre = load_part(gi + b * ldgi + j0, width) +
                      load_part(r + j0, width) * load_part(rec_after + b * H + j0, width);
            const vf8 cv = tanh8(pre);
            store_part(cand + j0, cv, width);
            const vf8 hv = load_part(hb + j0, width);
            vf8 next = hv + load_part(z + j0, width) * (cv - hv);
            if (mask) next = next * load_part(mask + b * H + j0, width);
            store_part(out + b * H + j0, next, width);
        })
    }
}

EXPORT void sr_gru_candidate_f32(float *c, int64_t B, int64_t H, const float *h, int64_t ldh,
                                 const float *rz, const float *gi, int64_t ldgi,
                                 const float *rec_after, const float *mask, float *out,
                                 int64_t n_threads) {
    SPLIT(B, B * H, MIN_PARALLEL_GRU, 1,
          gru_candidate_rows(c, H, h, ldh, rz, gi, ldgi, rec_after, mask, out, lo, hi));
}

/* Backward through the element-wise parts, no step back in time. dh (row stride lddh) is
 * the gradient of the step's output, before its dropout mask (NULL for none). Writes the
 * gradient of the gate pre-activations into dgi (B x 3H, contiguous: candidate, reset,
 * update). The reset gate's part needs, for the paper's GRU, the product
 * (d_cand W_h^T) computed after this call: it is left for sr_gru_reset_grad_f32. For the
 * reset-after GRU (rec_after non-NULL) it is done here, and d_rec = d_cand * r, the
 * gradient of h W_h + b_h_c, is written (B x H, contiguous). */
static KERNEL void gru_backward_rows(const float *dh, int64_t lddh, const float *mask,
                                     int64_t H, const float *rz, const float *c,
                                     const float *h, int64_t ldh, const float *rec_after,
                                     float *dgi, float *d_rec, int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) {
        const float *r = rz + b * 2 * H, *z = r + H, *hb = h + b * ldh, *cb = c + b * H;
        float *d_cand = dgi + b * 3 * H, *d_r = d_cand + H, *d_z = d_r + H;
        ROW_LOOP(H, {
            vf8 g = load_part(dh + b * lddh + j0, width);
            if (mask) g = g * load_part(mask + b * H + j0, width);
            const vf8 cv = load_part(cb + j0, width), zv = load_part(z + j0, width);
            const vf8 dc = g * zv * (1.0f - cv * cv);
            store_part(d_cand + j0, dc, width);
            store_part(d_z + j0, g * (cv - load_part(hb + j0, width)) * (zv * (1.0f - zv)),
                       width);
            if (rec_after) {
                const vf8 rv = load_part(r + j0, width);
                store_part(d_rec + b * H + j0, dc * rv, width);
                store_part(d_r + j0,
                           dc * load_part(rec_after + b * H + j0, width) * (rv * (1.0f - rv)),
                           width);
            }
        })
    }
}

EXPORT void sr_gru_backward_f32(const float *dh, int64_t lddh, const float *mask, int64_t B,
                                int64_t H, const float *rz, const float *c, const float *h,
                                int64_t ldh, const float *rec_after, float *dgi,
                                float *d_rec, int64_t n_threads) {
    SPLIT(B, B * H, MIN_PARALLEL_GRU, 1,
          gru_backward_rows(dh, lddh, mask, H, rz, c, h, ldh, rec_after, dgi, d_rec, lo, hi));
}

/* The paper's GRU: d_r = (d_cand W_h^T) * h through the reset gate's sigmoid, written
 * into dgi's reset block. dr_h holds d_cand W_h^T (B x H, contiguous). */
static KERNEL void gru_reset_grad_rows(const float *dr_h, int64_t H, const float *rz,
                                       const float *h, int64_t ldh, float *dgi, int64_t lo,
                                       int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) {
        const float *r = rz + b * 2 * H;
        ROW_LOOP(H, {
            const vf8 rv = load_part(r + j0, width);
            store_part(dgi + b * 3 * H + H + j0,
                       load_part(dr_h + b * H + j0, width) *
                           load_part(h + b * ldh + j0, width) * (rv * (1.0f - rv)),
                       width);
        })
    }
}

EXPORT void sr_gru_reset_grad_f32(const float *dr_h, int64_t B, int64_t H, const float *rz,
                                  const float *h, int64_t ldh, float *dgi, int64_t n_threads) {
    SPLIT(B, B * H, MIN_PARALLEL_GRU, 1,
          gru_reset_grad_rows(dr_h, H, rz, h, ldh, dgi, lo, hi));
}
