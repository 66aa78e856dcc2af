/* A whole GRU4Rec training step with the linear cross-entropy.
 *
 * Part of the fused kernels' single translation unit: included by fused.c after
 * kernels.h, in the order fused.c gives; not compiled on its own. */

/* ---- A whole GRU4Rec training step with the linear cross-entropy ----
 *
 * The step of GRU4RecNetwork.train_step (_gru4rec_network.py) for the linear cross-entropy (the
 * official default), with any of its inputs: the output rows (constrained embedding, the
 * default), a table of embeddings, or one-hot (a table of the first layer's gate
 * inputs). It is made of the kernels above in the same order on the same values, so it
 * trains bit for bit like the Python step that calls them one by one; what it saves is
 * the Python and PyTorch dispatch between them (about 40 small operations, a third of a
 * step's time on two cores). */


static int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }

/* Layer l's part of the layers' scratch: max_batch H_l floats GRU_KEPT_GI + 1 times (the
 * GRU step's state with its gate inputs, then the layer's output, at layer_output). */
static float *layer_state(const Gru4recStep *p, float *layer_work, int64_t l) {
    for (int64_t k = 0; k < l; ++k)
        layer_work += round16((GRU_KEPT_GI + 1) * p->max_batch * p->sizes[k]);
    return layer_work;
}

static float *layer_output(float *state, int64_t block) { return state + GRU_KEPT_GI * block; }

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
        layers += round16((GRU_KEPT_GI + 1) * B * units); /* the step's state, the output */
    }
    int64_t U = 2 * B + p->n_sample;
    U = U < p->n_items ? U : p->n_items;
    const int64_t sizes[9] = {round16(B * p->layout[0]), layers, round16(U * (H + 1)),
                              round16(B * H), round16(sr_output_xent_scratch(B, H, U)),
                              round16(B + p->n_sample),
                              round16((3 + GRU_BACKWARD_WORK) * B * most_units),
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

/* Words of the int64 scratch that hold a flag per distinct row (keep_bias). */
static int64_t flag_words(const Gru4recStep *p) {
    return (2 * p->max_batch + p->n_sample + 7) / 8;
}

/* Scratch a plan needs: int64 (into *n_index) and floats (returned). The int64 scratch
 * holds a position per item; the step's touched, distinct and inverse rows; the inputs'
 * distinct and inverse rows; a bitmap of the items; then a byte per distinct row.
 * sr_gru4rec_step_init prepares it. */
EXPORT int64_t sr_gru4rec_step_scratch(Gru4recStep *p, int64_t *n_index) {
    *n_index = p->n_items + 3 * (2 * p->max_batch + p->n_sample) + 2 * p->max_batch +
               bitmap_words(p->n_items) + flag_words(p);
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
    const int64_t words = bitmap_words(p->n_items), bitmap = n_index - flag_words(p) - words;
    for (int64_t k = 0; k < bitmap; ++k) p->index[k] = -1;
    memset(p->index + bitmap, 0, (size_t)words * sizeof(int64_t));
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
    uint8_t *keep_bias = (uint8_t *)(bits + bitmap_words(p->n_items));

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

    /* Forward through the layers; layer l keeps the GRU step's state, then its output
     * (B H_l), in its part of layer_work (layer_state). */
    const float *in = x;
    for (int64_t l = 0; l < L; ++l) {
        const int64_t *at = p->layout + 6 * l, I = at[0], units = p->sizes[l];
        const int64_t block = B * units;
        float *state = layer_state(p, layer_work, l);
        const float *bh = at[5] >= 0 ? p->dense + at[5] : 0, *mask = masks ? masks[l] : 0;
        if (l == 0 && onehot) { /* gate inputs: the items' rows of the table, plus b */
            float *gi = state + GRU_GI * block;
            const float *bias = p->dense + at[4];
            for (int64_t b = 0; b < B; ++b) {
                const float *row = p->in_table + items[b] * p->in_width;
                for (int64_t j = 0; j < 3 * units; ++j) gi[b * 3 * units + j] = row[j] + bias[j];
            }
            gru_step_into(B, 0, units, 0, 0, 0, 0, gi, 3 * units, hidden[l], units,
                          p->dense + at[2], p->dense + at[3], bh, p->reset_after[l], mask,
                          state, layer_output(state, block), nt);
        } else {
            gru_step_into(B, I, units, in, I, p->dense + at[1], p->dense + at[4], 0, 0,
                          hidden[l], units, p->dense + at[2], p->dense + at[3], bh,
                          p->reset_after[l], mask, state, layer_output(state, block), nt);
        }
        in = layer_output(state, block);
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
                                            n_cols, shifts, out_grad, d_h, xent, nt);

    /* Backward through the layers, top-down (no step back in time); each layer's input
     * gradient goes into the half of dx the layer above did not use. */
    const float *d = d_h;
    const int64_t dx_half = round16(p->max_batch * widest_input(p));
    for (int64_t l = L - 1; l >= 0; --l) {
        const int64_t *at = p->layout + 6 * l, I = at[0], units = p->sizes[l];
        const int64_t block = B * units;
        const int fed = !(l == 0 && onehot); /* a layer fed by a vector through wx */
        float *d_x = dx + ((L - 1 - l) % 2) * dx_half, *state = layer_state(p, layer_work, l);
        const float *layer_in =
            l == 0 ? x : layer_output(layer_state(p, layer_work, l - 1), B * p->sizes[l - 1]);
        gru_step_backward_from(B, I, units, d, units, masks ? masks[l] : 0, state, hidden[l],
                               units, p->reset_after[l], fed ? layer_in : 0, I,
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
        for (int64_t u = 0; u < U; ++u) keep_bias[u] = 1;
        for (int64_t c = 0; c < n_cols; ++c) keep_bias[column_of[c]] = 0;
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
                          constrained ? keep_bias : 0, lr, momentum, nt);

    /* The new states, after the backward pass read the old ones. */
    for (int64_t l = 0; l < L; ++l) {
        const int64_t block = B * p->sizes[l];
        memcpy(hidden[l], layer_output(layer_state(p, layer_work, l), block),
               (size_t)block * sizeof(float));
    }
    *loss = (double)(float)total;
    return 0;
}
