// The launchers of kernels.cu, called by ops_cuda.cpp (torch glue) on torch's current stream.
#pragma once
#include <cuda_runtime.h>
#include <cstdint>

namespace kerzoo {

enum { KZ_F32 = 0, KZ_F64 = 1, KZ_F16 = 2, KZ_BF16 = 3 };
constexpr int MAX_DIRECTIONS = 16;  // per launch; more are applied in several launches
struct Directions { double coef[MAX_DIRECTIONS]; uint64_t seed[MAX_DIRECTIONS]; int q; };

cudaError_t launch_fill(void* data, int dtype, int64_t n, int64_t offset, uint64_t key, uint64_t seed, int dist,
                        int sms, cudaStream_t stream);
cudaError_t launch_add_multi(void* data, int dtype, int64_t n, int64_t offset, uint64_t key, int dist,
                             const Directions& d, bool sr, uint64_t rseed, int sms, cudaStream_t stream);
cudaError_t launch_restore_perturb(void* data, int dtype, int64_t n, int64_t offset, uint64_t key, int dist,
                                   double cr, uint64_t sr, double cn, uint64_t sn, int sms, cudaStream_t stream);

}  // namespace kerzoo
