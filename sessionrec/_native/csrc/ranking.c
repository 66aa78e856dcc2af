/* Ranks of the evaluation protocol, from scores or straight from a product.
 *
 * Part of the fused kernels' single translation unit: included by fused.c after
 * kernels.h, in the order fused.c gives; not compiled on its own. */

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
 * M rows, row stride ldh, K columns; matrix: (K + 1) x N row-major, W in its first K rows
 * and the bias in its last) is >= (into ge) and,
 * if gt is not NULL, > (into gt) the score of its target item targets[r], which goes
 * into target_score. NaN scores never count. Target r is scored with row row_of[r] of
 * h; with row_of NULL, row r (then n_targets == M), and rows equal bit for bit share one
 * computation of their scores (an evaluation walk gives every session that starts with
 * the same item the same first state). scratch and index: what sr_product_ranks_scratch
 * asks for. Returns -1 (nothing written) when a target lies outside [0, N) or a row
 * outside [0, M), else 0. */
EXPORT int64_t sr_product_ranks_f32(const float *h, int64_t M, int64_t K, int64_t ldh,
                                    const float *matrix, int64_t N,
                                    const int64_t *targets, const int64_t *row_of,
                                    int64_t n_targets, double *ge, double *gt,
                                    float *target_score, float *scratch, int64_t *index,
                                    int64_t n_threads) {
    for (int64_t r = 0; r < n_targets; ++r)
        if (targets[r] < 0 || targets[r] >= N || (row_of && (row_of[r] < 0 || row_of[r] >= M)))
            return -1;
    const int64_t T = n_threads > 1 ? n_threads : 1;
    const float *w = matrix, *bias = matrix + K * N, *hd = h;
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
