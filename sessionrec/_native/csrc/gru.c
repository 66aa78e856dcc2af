/* One step of a GRU layer, forward and backward, products included.
 *
 * Part of the fused kernels' single translation unit: included by fused.c after
 * kernels.h, in the order fused.c gives; not compiled on its own. */

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

/* One GRU step into `state` (GRU_KEPT or, computing the gate inputs, GRU_KEPT_GI blocks
 * of B x H floats, laid out as the GRU_* offsets say) and `out`. x (B x I, row stride
 * ldx) and wx (I x 3H) give the gate inputs, written into the state with the bias b
 * (3H); with x NULL, gi (row stride ldgi) holds them. h: B x H (row stride ldh); wrz:
 * H x 2H; wh: H x H; bh (3H, or NULL): the recurrent bias, with reset_after only; mask
 * (B x H, or NULL): dropout. Every matrix is row-major, and contiguous where no stride
 * is given. */
static void gru_step_into(int64_t B, int64_t I, int64_t H, const float *x, int64_t ldx,
                          const float *wx, const float *b, const float *gi, int64_t ldgi,
                          const float *h, int64_t ldh, const float *wrz, const float *wh,
                          const float *bh, int64_t reset_after, const float *mask,
                          float *state, float *out, int64_t n_threads) {
    const int64_t block = B * H;
    GruForward s = {B, I, H, ldx, ldh, x ? 3 * H : ldgi, x, wx, b, h, wrz, wh, bh, mask,
                    x ? state + GRU_GI * block : (float *)gi, state + GRU_RZ * block,
                    state + GRU_REC * block, state + GRU_C * block, out, (int)reset_after, 0};
    const int64_t use = n_threads > 1 && block >= MIN_PARALLEL_GRU ? n_threads : 1;
    RUN_PHASES(gru_forward_phases, s, use);
}

EXPORT int64_t sr_gru_state_floats(int64_t B, int64_t H, int64_t with_gi) {
    return (with_gi ? GRU_KEPT_GI : GRU_KEPT) * B * H;
}

EXPORT void sr_gru_step_f32(const GruStepArgs *a) {
    gru_step_into(a->B, a->I, a->H, a->x, a->ldx, a->wx, a->b, a->gi, a->ldgi, a->h, a->ldh,
                  a->wrz, a->wh, a->bh, a->reset_after, a->mask, a->state, a->out,
                  a->n_threads);
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
 * state (gru_step_into's) and h (row stride ldh). Writes dgi (B x 3H), the gradient of the
 * gate inputs, and the weights' gradients dwrz (H x 2H), dwh (H x H), and where not
 * NULL: db (3H) and dbh (3H; its first H only with reset_after), the biases'; dwx
 * (I x 3H) = x^T dgi for the input x (B x I, row stride ldx); dx (B x I) = dgi wx^T.
 * work: GRU_BACKWARD_WORK blocks of B x H floats. */
static void gru_step_backward_from(int64_t B, int64_t I, int64_t H, const float *dh,
                                   int64_t lddh, const float *mask, const float *state,
                                   const float *h, int64_t ldh, int64_t reset_after,
                                   const float *x, int64_t ldx, const float *wx,
                                   const float *wh, float *dgi, float *work, float *dwx,
                                   float *db, float *dwrz, float *dwh, float *dbh, float *dx,
                                   int64_t n_threads) {
    const int64_t block = B * H;
    GruBackward s = {B, I, H, lddh, ldh, ldx, dh, mask, state + GRU_RZ * block,
                     state + GRU_C * block, h, state + GRU_REC * block, x, wx, wh, dgi, work,
                     dwx, db, dwrz, dwh, dbh, dx, (int)reset_after};
    const int64_t use = n_threads > 1 && block >= MIN_PARALLEL_GRU ? n_threads : 1;
    RUN_PHASES(gru_backward_phases, s, use);
}

EXPORT int64_t sr_gru_backward_work_floats(int64_t B, int64_t H) {
    return GRU_BACKWARD_WORK * B * H;
}

EXPORT void sr_gru_step_backward_f32(const GruBackwardArgs *a) {
    gru_step_backward_from(a->B, a->I, a->H, a->dh, a->lddh, a->mask, a->state, a->h, a->ldh,
                           a->reset_after, a->x, a->ldx, a->wx, a->wh, a->dgi, a->work,
                           a->dwx, a->db, a->dwrz, a->dwh, a->dbh, a->dx, a->n_threads);
}
