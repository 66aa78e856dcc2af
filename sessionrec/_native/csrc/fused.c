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
#include "prefix_tree.c"
#include "gru4rec_step.c"
#include "bpr_max.c"

#define FIELD(name) (int64_t)offsetof(Gru4recStep, name)

EXPORT int64_t sr_struct_layout(int64_t *out, int64_t capacity) {
    const int64_t values[] = {
        (int64_t)sizeof(Gru4recStep), FIELD(n_items), FIELD(n_layers), FIELD(n_sample),
        FIELD(samples_int32), FIELD(max_batch), FIELD(n_threads), FIELD(sizes),
        FIELD(layout), FIELD(reset_after), FIELD(table), FIELD(n_planes),
        FIELD(plane_stride), FIELD(dense), FIELD(grad), FIELD(acc), FIELD(mom),
        FIELD(n_dense), FIELD(shift_batch), FIELD(shift_sample), FIELD(lr),
        FIELD(momentum), FIELD(index), FIELD(work), FIELD(parts), FIELD(keep_bias),
        FIELD(input_mode), FIELD(in_table), FIELD(in_planes), FIELD(in_plane_stride),
        FIELD(in_width)};
    const int64_t n = (int64_t)(sizeof(values) / sizeof(values[0]));
    for (int64_t k = 0; k < n && k < capacity; ++k) out[k] = values[k];
    return n < capacity ? n : capacity;
}
