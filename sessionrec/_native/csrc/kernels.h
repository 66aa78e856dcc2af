/* The fused CPU kernels of sessionrec: the one header of the C library.
 *
 * It declares what Python (sessionrec/_native/kernels.py, through ctypes) may call, the
 * structures Python fills (Gru4recStep, GruStepArgs, GruBackwardArgs, each mirrored there
 * by a ctypes.Structure whose size and field offsets are checked against
 * sr_struct_layout when the library loads), the layout of what a GRU step keeps for its
 * backward pass (Python never reads into it: it only sizes the buffer through
 * sr_gru_state_floats), and the macros every part shares. Every scratch buffer is sized
 * by a *_scratch function here and laid out by the library. The parts, one file per
 * concern, are included by fused.c into a single translation unit, so that the compiler
 * still inlines the small static kernels across concerns as it did when they were one
 * file (same code, same speed, the same results bit for bit).
 */
#ifndef SESSIONREC_KERNELS_H
#define SESSIONREC_KERNELS_H

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

/* ---- What a GRU step keeps for its backward pass (gru.c) ----
 * Offsets in blocks of B x H floats: the gates r, z (2 blocks), rec (r * h, or
 * h W_h + b_h_c with reset_after), the candidate c, then the gate inputs (3 blocks) when
 * the step computes them from its input. The backward step's work: d_rec (1 block). */
enum { GRU_RZ = 0, GRU_REC = 2, GRU_C = 3, GRU_GI = 4, GRU_KEPT = 4, GRU_KEPT_GI = 7,
       GRU_BACKWARD_WORK = 1 };

/* The arguments of one GRU step (sr_gru_step_f32; see gru_step_into in gru.c). */
typedef struct {
    int64_t B, I, H;            /* rows, input width (0: gate inputs given), units */
    const float *x;             /* B x I (row stride ldx), or NULL: gi holds the gate inputs */
    int64_t ldx;
    const float *wx, *b;        /* I x 3H and 3H, with x */
    const float *gi;            /* B x 3H (row stride ldgi), without x */
    int64_t ldgi;
    const float *h;             /* B x H (row stride ldh): the previous state */
    int64_t ldh;
    const float *wrz, *wh, *bh; /* H x 2H, H x H, and 3H or NULL (reset_after only) */
    const float *mask;          /* B x H dropout mask, or NULL */
    int64_t reset_after, n_threads;
    float *state;               /* sr_gru_state_floats(B, H, x != NULL), written */
    float *out;                 /* B x H, written */
} GruStepArgs;

/* The arguments of its backward step (sr_gru_step_backward_f32). */
typedef struct {
    int64_t B, I, H;
    const float *dh;            /* B x H (row stride lddh): the output's gradient */
    int64_t lddh;
    const float *mask;          /* the forward step's mask, or NULL */
    const float *state;         /* the forward step's state */
    const float *h;             /* the forward step's previous state (row stride ldh) */
    int64_t ldh;
    const float *x;             /* the forward step's input (row stride ldx), or NULL */
    int64_t ldx;
    const float *wx, *wh;       /* wx: NULL for a layer without input weights */
    int64_t reset_after, n_threads;
    float *dgi;                 /* B x 3H, written: the gate inputs' gradient */
    float *work;                /* sr_gru_backward_work_floats(B, H) */
    float *dwx, *db, *dwrz, *dwh, *dbh; /* weight gradients, written (NULL: not wanted) */
    float *dx;                  /* B x I = dgi wx^T, or NULL */
} GruBackwardArgs;

/* ---- The plan of a whole GRU4Rec training step (see gru4rec_step.c) ---- */
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
    int64_t input_mode;         /* 0: the output rows (constrained), 1: a table of
                                   embeddings, 2: one-hot (a table of gate inputs) */
    float *in_table;            /* modes 1 and 2: the packed input table, like table */
    int64_t in_planes, in_plane_stride, in_width;
} Gru4recStep;

/* ---- What Python calls ---- */
EXPORT int sr_openmp(void);
EXPORT void sr_sparse_adagrad_f32(float *buffer, int64_t n_planes, int64_t plane_stride, int64_t width, const int64_t *rows, int64_t n, const float *grad, const uint8_t *keep, float lr, float momentum, int64_t n_threads);
EXPORT void sr_dense_adagrad_f32(float *param, const float *grad, float *acc, float *mom, int64_t n, float lr, float momentum, int64_t n_threads);
EXPORT int64_t sr_unique_marked_scratch(int64_t n_rows);
EXPORT int64_t sr_unique_marked(const int64_t *rows, int64_t n, int64_t n_rows, int64_t *scratch, int64_t *distinct, int64_t *inverse);
EXPORT int64_t sr_output_xent_scratch(int64_t B, int64_t H, int64_t U);
EXPORT double sr_output_xent_f32(const float *h, int64_t B, int64_t H, int64_t ldh, const float *table, const int64_t *row_index, int64_t U, const int64_t *column_of, int64_t n_cols, const float *shift, float *out_grad, float *d_h, float *scratch, int64_t n_threads);
EXPORT int64_t sr_gru_state_floats(int64_t B, int64_t H, int64_t with_gi);
EXPORT int64_t sr_gru_backward_work_floats(int64_t B, int64_t H);
EXPORT void sr_gru_step_f32(const GruStepArgs *a);
EXPORT void sr_gru_step_backward_f32(const GruBackwardArgs *a);
EXPORT int64_t sr_rank_counts_f32(const float *scores, int64_t rows, int64_t n, int64_t ld, const int64_t *targets, double *ge, double *gt, int64_t n_threads);
EXPORT int64_t sr_product_ranks_scratch(int64_t M, int64_t K, int64_t N, int64_t n_targets, int64_t row_of, int64_t n_threads, int64_t *n_index);
EXPORT int64_t sr_product_ranks_f32(const float *h, int64_t M, int64_t K, int64_t ldh, const float *matrix, int64_t N, const int64_t *targets, const int64_t *row_of, int64_t n_targets, double *ge, double *gt, float *target_score, float *scratch, int64_t *index, int64_t n_threads);
EXPORT void sr_linear_f32(const float *A, int64_t M, int64_t K, int64_t lda, const float *W, int64_t N, const float *bias, float *C, int64_t n_threads);
EXPORT int64_t sr_packed_strip_floats(int64_t K1, int64_t N);
EXPORT void sr_pack_strips_f32(const float *matrix, int64_t K1, int64_t N, float *out, int64_t n_threads);
EXPORT int64_t sr_product_topk_scratch(int64_t M, int64_t k, int64_t n_threads);
EXPORT int64_t sr_product_topk_f32(const float *h, int64_t M, int64_t K, int64_t ldh, const float *packed, int64_t N, int64_t k, const int64_t *excl_offsets, const int64_t *excl_items, int64_t *out_items, float *out_scores, float *scratch, int64_t n_threads);
EXPORT int64_t sr_int8_topk_available(void);
EXPORT int64_t sr_int8_strips_bytes(int64_t K, int64_t N);
EXPORT int64_t sr_int8_meta_floats(int64_t N);
EXPORT void sr_pack_int8_strips(const float *matrix, int64_t K1, int64_t N, void *out, float *rows, float *meta, int64_t n_threads);
EXPORT int64_t sr_int8_topk_scratch(int64_t M, int64_t N, int64_t K, int64_t k, int64_t n_threads);
EXPORT int64_t sr_int8_topk_f32(const float *h, int64_t M, int64_t K, int64_t ldh, const void *strips, const float *item_rows, const float *meta, int64_t N, int64_t k, const int64_t *excl_offsets, const int64_t *excl_items, int64_t *out_items, float *out_scores, int64_t *fallback, void *scratch, int64_t n_threads);
EXPORT int64_t sr_prefix_tree_scratch(int64_t n_fed);
EXPORT int64_t sr_prefix_tree(const int64_t *items, const int64_t *offsets, int64_t s0, int64_t s1, int64_t *node_of, int64_t *parent, int64_t *item, int64_t *level_offsets, int64_t *n_levels, int64_t *index);
EXPORT int64_t sr_gru_tree_walk_scratch(int64_t n_layers, const int64_t *sizes, int64_t max_width);
EXPORT int64_t sr_gru_tree_walk_f32(int64_t n_layers, const int64_t *sizes, const int64_t *layout, const int64_t *reset_after, const float *dense, const float *gate_table, int64_t n_items, const int64_t *level_offsets, int64_t n_levels, const int64_t *parent, const int64_t *item, float *const *state, int64_t max_width, float *work, int64_t n_threads);
EXPORT int64_t sr_gru4rec_step_scratch(Gru4recStep *p, int64_t *n_index);
EXPORT void sr_gru4rec_step_init(Gru4recStep *p);
EXPORT int64_t sr_gru4rec_step_f32(const Gru4recStep *p, int64_t B, const int64_t *items, const int64_t *targets, const void *samples, const float *keep, float *const *hidden, const float *embed_mask, const float *const *masks, double *loss);
EXPORT int64_t sr_bpr_max_scratch(int64_t N, int64_t n_threads);
EXPORT void sr_bpr_max_f32(const float *scores, int64_t B, int64_t U, int64_t ld, const int64_t *column_of, int64_t N, const float *shift, float bpreg, int64_t elu, float alpha, float *d_distinct, double *row_loss, float *work, int64_t n_threads);

/* Sizes and offsets of a structure Python mirrors (which: 0 Gru4recStep, 1 GruStepArgs,
 * 2 GruBackwardArgs): out[0] = its size, then the byte offset of each field in
 * declaration order; returns how many values it wrote (at most capacity), -1 for an
 * unknown structure. */
EXPORT int64_t sr_struct_layout(int64_t which, int64_t *out, int64_t capacity);

#endif
