// The launchers of kernels.cu, called by ops_cuda.cpp (torch glue) on torch's current stream.
// Every launch covers a list of segments (tensors of one dtype): one tensor is a list of one,
// and a pass over a whole model is a few launches instead of one per tensor.
#pragma once
#include <cuda_runtime.h>
#include <cstdint>

namespace kerzoo {

enum { KZ_F32 = 0, KZ_F64 = 1, KZ_F16 = 2, KZ_BF16 = 3 };
constexpr int MAX_DIRECTIONS = 16;  // per launch; more are applied in several launches
constexpr int MAX_SEGMENTS = 48;    // tensors per launch; more take several launches
// The directions of one add_table launch: segment s adds coef[s][i] z(seed[i]); directions
// [0, split) are rounded on their own first (0: one rounding). About 6 KB of kernel parameters:
// CUDA 12.1 or later (32 KB of parameters on sm_70 and later).
struct Directions { double coef[MAX_SEGMENTS][MAX_DIRECTIONS]; uint64_t seed[MAX_DIRECTIONS]; int q; int split; };

// A tensor: its data, element count, global offset of element 0, key; `start` is the first
// CUDA block of the launch that works on it (blocks [start, next segment's start)).
struct Segment { void* data; int64_t n; int64_t offset; uint64_t key; int64_t start; };
struct Segments { Segment s[MAX_SEGMENTS]; int count; int dtype; };

// Fills in each segment's `start` from the work it holds; returns the grid size.
unsigned plan_blocks(Segments& segs, int sms);

cudaError_t launch_fill(const Segments& segs, uint64_t seed, int dist, unsigned grid, cudaStream_t stream);
cudaError_t launch_add_table(const Segments& segs, int dist, const Directions& d, bool sr, uint64_t rseed,
                             unsigned grid, cudaStream_t stream);

// theta (m x n, row-major, of dtype `dtype`) += us (m x r) @ vt (r x n), both in the compute type
// (double for a float64 theta, else float), with one rounding per element; no temporary.
cudaError_t launch_lowrank(int dtype, void* theta, int64_t m, int64_t n, const void* us, const void* vt, int r,
                           int sms, cudaStream_t stream);

}  // namespace kerzoo
