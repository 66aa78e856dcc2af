/* The prefix tree of an evaluation walk, and the GRU states over it.
 *
 * Part of the fused kernels' single translation unit: included by fused.c after
 * kernels.h, in the order fused.c gives; not compiled on its own. */

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
    for (int64_t l = 0; l < n_layers; ++l) total += (GRU_KEPT_GI + 1) * max_width * sizes[l];
    return total;
}

/* The states of a prefix tree (sr_prefix_tree) through GRU4Rec's layers, level by level:
 * one GRU step per layer for every max_width nodes of a level (gru_forward_phases), the state of a node's parent (zero on level 0) and its item's row of
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
                float *h = part + GRU_KEPT_GI * block; /* the parents' states */
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
                                l ? part + GRU_GI * block : (float *)gate_table,
                                part + GRU_RZ * block, part + GRU_REC * block,
                                part + GRU_C * block, state[l] + first * units,
                                (int)reset_after[l], l ? 0 : item + first};
                const int64_t use = n_threads > 1 && block >= MIN_PARALLEL_GRU ? n_threads : 1;
                RUN_PHASES(gru_forward_phases, s, use);
                part += (GRU_KEPT_GI + 1) * max_width * units;
            }
        }
    }
    return 0;
}
