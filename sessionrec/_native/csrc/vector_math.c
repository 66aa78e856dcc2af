/* Eight-lane float vectors and the element-wise maths on them (exp, sigmoid, tanh).
 *
 * Part of the fused kernels' single translation unit: included by fused.c after
 * kernels.h, in the order fused.c gives; not compiled on its own. */

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
