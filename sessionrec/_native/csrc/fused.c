/* Fused CPU kernels of the training steps and of evaluation (see kernels.py, which loads
 * this library with ctypes): the library's one translation unit, which includes its
 * parts (one file per concern, declared in kernels.h). Plain C with no Python API: each
 * function makes one pass over memory where the PyTorch code it replaces makes several,
 * each with its own dispatch cost.
 *
 * Built by setup.py as an optional extension: where no C compiler is found the library
 * is missing and the PyTorch code runs instead. Compiled without floating-point
 * contraction (-ffp-contract=off) so the arithmetic is the plain IEEE sequence written
 * here, and with -fno-math-errno so that sqrtf vectorises.
 *
 * On Linux it is built with OpenMP and linked to libgomp.so.1, the name under which the
 * PyTorch wheels ship theirs: loaded after torch, the library then shares torch's thread
 * pool instead of starting a second one (kernels.py checks that loading it mapped no
 * OpenMP runtime of its own, and asks for one thread otherwise). The kernels split their
 * work into contiguous ranges, one per thread, each element written by one thread, and reduce
 * in a fixed order afterwards: the results do not depend on the number of threads.
 */
#include "kernels.h"

#include <stddef.h>

/* Whether this build can run kernels on several threads. */
EXPORT int sr_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

#include "optim.c"
#include "vector_math.c"
#include "output_xent.c"
#include "gemm.c"
#include "gru.c"
#include "ranking.c"
#include "topk.c"
#include "bounded_topk.c"
#include "prefix_tree.c"
#include "gru4rec_step.c"
#include "bpr_max.c"

#define FIELD(type, name) (int64_t)offsetof(type, name)

EXPORT int64_t sr_struct_layout(int64_t which, int64_t *out, int64_t capacity) {
#define S FIELD
    const int64_t plan[] = {
        (int64_t)sizeof(Gru4recStep), S(Gru4recStep, n_items), S(Gru4recStep, n_layers),
        S(Gru4recStep, n_sample), S(Gru4recStep, samples_int32), S(Gru4recStep, max_batch),
        S(Gru4recStep, n_threads), S(Gru4recStep, sizes), S(Gru4recStep, layout),
        S(Gru4recStep, reset_after), S(Gru4recStep, table), S(Gru4recStep, n_planes),
        S(Gru4recStep, plane_stride), S(Gru4recStep, dense), S(Gru4recStep, grad),
        S(Gru4recStep, acc), S(Gru4recStep, mom), S(Gru4recStep, n_dense),
        S(Gru4recStep, shift_batch), S(Gru4recStep, shift_sample), S(Gru4recStep, lr),
        S(Gru4recStep, momentum), S(Gru4recStep, index), S(Gru4recStep, work),
        S(Gru4recStep, input_mode),
        S(Gru4recStep, in_table), S(Gru4recStep, in_planes), S(Gru4recStep, in_plane_stride),
        S(Gru4recStep, in_width)};
    const int64_t step[] = {
        (int64_t)sizeof(GruStepArgs), S(GruStepArgs, B), S(GruStepArgs, I), S(GruStepArgs, H),
        S(GruStepArgs, x), S(GruStepArgs, ldx), S(GruStepArgs, wx), S(GruStepArgs, b),
        S(GruStepArgs, gi), S(GruStepArgs, ldgi), S(GruStepArgs, h), S(GruStepArgs, ldh),
        S(GruStepArgs, wrz), S(GruStepArgs, wh), S(GruStepArgs, bh), S(GruStepArgs, mask),
        S(GruStepArgs, reset_after), S(GruStepArgs, n_threads), S(GruStepArgs, state),
        S(GruStepArgs, out)};
    const int64_t back[] = {
        (int64_t)sizeof(GruBackwardArgs), S(GruBackwardArgs, B), S(GruBackwardArgs, I),
        S(GruBackwardArgs, H), S(GruBackwardArgs, dh), S(GruBackwardArgs, lddh),
        S(GruBackwardArgs, mask), S(GruBackwardArgs, state), S(GruBackwardArgs, h),
        S(GruBackwardArgs, ldh), S(GruBackwardArgs, x), S(GruBackwardArgs, ldx),
        S(GruBackwardArgs, wx), S(GruBackwardArgs, wh), S(GruBackwardArgs, reset_after),
        S(GruBackwardArgs, n_threads), S(GruBackwardArgs, dgi), S(GruBackwardArgs, work),
        S(GruBackwardArgs, dwx), S(GruBackwardArgs, db), S(GruBackwardArgs, dwrz),
        S(GruBackwardArgs, dwh), S(GruBackwardArgs, dbh), S(GruBackwardArgs, dx)};
#undef S
    const int64_t *values;
    int64_t n;
    switch (which) {
    case 0: values = plan; n = (int64_t)(sizeof(plan) / sizeof(plan[0])); break;
    case 1: values = step; n = (int64_t)(sizeof(step) / sizeof(step[0])); break;
    case 2: values = back; n = (int64_t)(sizeof(back) / sizeof(back[0])); break;
    default: return -1;
    }
    for (int64_t k = 0; k < n && k < capacity; ++k) out[k] = values[k];
    return n < capacity ? n : capacity;
}
