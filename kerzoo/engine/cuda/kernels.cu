// CUDA kernels of the engine's ops, in plain CUDA (no torch headers): ops_cuda.cpp launches
// them on torch's current stream. One thread per block of four elements (one Philox call gives
// its four values), grid-stride loops, 4-wide vector loads and stores where aligned. A launch
// covers a list of tensors (Segments): each CUDA block works on one of them, so a pass over a
// model takes a few launches. The tables are __grid_constant__ kernel parameters, indexed in
// place (no per-thread copy).
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>
#include <type_traits>
#include "../csrc/philox.h"
#include "kernels.h"

namespace kerzoo {
namespace {

template <typename T> struct Compute { using type = float; };
template <> struct Compute<double> { using type = double; };

template <typename T> __device__ __forceinline__ float to_f(T v) { return (float)v; }
template <> __device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> __device__ __forceinline__ float to_f(__half v) { return __half2float(v); }

template <typename T> __device__ __forceinline__ typename Compute<T>::type load(T v) { return to_f(v); }
template <> __device__ __forceinline__ double load(double v) { return v; }

template <typename T> __device__ __forceinline__ T store(float x);
template <> __device__ __forceinline__ __nv_bfloat16 store(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half store(float x) { return __float2half_rn(x); }

template <typename T> __device__ __forceinline__ uint16_t bits(T v);
template <> __device__ __forceinline__ uint16_t bits(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }
template <> __device__ __forceinline__ uint16_t bits(__half v) { return __half_as_ushort(v); }
template <typename T> __device__ __forceinline__ T from_bits(uint16_t b);
template <> __device__ __forceinline__ __nv_bfloat16 from_bits(uint16_t b) { return __ushort_as_bfloat16(b); }
template <> __device__ __forceinline__ __half from_bits(uint16_t b) { return __ushort_as_half(b); }

// Round a compute value to T: nearest, or stochastic for bf16/fp16 (reference.stochastic_round).
template <typename T>
__device__ __forceinline__ T round_out(typename Compute<T>::type x, bool sr, uint32_t word) {
  if constexpr (std::is_same<T, double>::value) {
    return x;
  } else if constexpr (std::is_same<T, float>::value) {
    return x;
  } else {
    T down = store<T>(x);
    if (!sr) return down;
    float df = to_f(down);
    T other = from_bits<T>(next16(bits(down), x >= df));
    float gap = to_f(other) - df;
    float frac = gap != 0.f ? (x - df) / gap : 0.f;
    float u = __uint2float_rn(word) * 2.3283064365386963e-10f;  // = the double product, rounded
    return u < frac ? other : down;
  }
}

__device__ __forceinline__ void values(uint64_t b, uint64_t key, uint64_t seed, int dist, float z[4]) {
  U4 r = philox(b, key, seed);
  if (dist == 0) {
    float u0 = uniform01(r.x), u1 = uniform01(r.y), u2 = uniform01(r.z), u3 = uniform01(r.w);
    float ra = sqrtf(-2.0f * fast_log(u0)), rb = sqrtf(-2.0f * fast_log(u2));
    float sa, ca, sb, cb;
    fast_sincos_2pi(u1 - rintf(u1), &sa, &ca);
    fast_sincos_2pi(u3 - rintf(u3), &sb, &cb);
    z[0] = ra * ca; z[1] = ra * sa; z[2] = rb * cb; z[3] = rb * sb;
  } else {
    z[0] = (r.x >> 31) ? -1.f : 1.f; z[1] = (r.y >> 31) ? -1.f : 1.f;
    z[2] = (r.z >> 31) ? -1.f : 1.f; z[3] = (r.w >> 31) ? -1.f : 1.f;
  }
}

template <typename T> struct alignas(sizeof(T) * 4) Vec4 { T v[4]; };

// The element range of block b within the tensor: local index j0 of lane 0, lanes [l0, l1).
struct Span { int64_t j0; int l0, l1; bool full; };
template <typename T>
__device__ __forceinline__ Span span(T* data, int64_t b, int64_t n, int64_t offset) {
  Span s;
  s.j0 = b * 4 - offset;
  s.l0 = s.j0 < 0 ? (int)-s.j0 : 0;
  s.l1 = s.j0 + 4 > n ? (int)(n - s.j0) : 4;
  s.full = s.l0 == 0 && s.l1 == 4 && (reinterpret_cast<uintptr_t>(data + s.j0) % sizeof(Vec4<T>) == 0);
  return s;
}

template <typename T>
__device__ __forceinline__ void load4(T* data, const Span& s, typename Compute<T>::type x[4]) {
  if (s.full) {
    Vec4<T> v = *reinterpret_cast<const Vec4<T>*>(data + s.j0);
#pragma unroll
    for (int k = 0; k < 4; ++k) x[k] = load(v.v[k]);
  } else {  // static indices keep the arrays in registers
#pragma unroll
    for (int k = 0; k < 4; ++k) x[k] = (k >= s.l0 && k < s.l1) ? load(data[s.j0 + k]) : 0;
  }
}

template <typename T>
__device__ __forceinline__ void store4(T* data, const Span& s, const T y[4]) {
  if (s.full) {
    Vec4<T> v;
#pragma unroll
    for (int k = 0; k < 4; ++k) v.v[k] = y[k];
    *reinterpret_cast<Vec4<T>*>(data + s.j0) = v;
  } else {
#pragma unroll
    for (int k = 0; k < 4; ++k)
      if (k >= s.l0 && k < s.l1) data[s.j0 + k] = y[k];
  }
}

// The segment of this CUDA block: the last one whose first block is <= blockIdx.x.
__device__ __forceinline__ int find_segment(const Segments& segs) {
  int s = 0;
  while (s + 1 < segs.count && segs.s[s + 1].start <= (int64_t)blockIdx.x) ++s;
  return s;
}

// Loops over the blocks of four elements of this CUDA block's segment, grid-stride within the
// CUDA blocks assigned to that segment. Defines `data` (T*), `n`, `offset`, `key` and `b`.
#define KZ_SEGMENT_BLOCKS                                                                      \
  const int si = find_segment(segs);                                                           \
  const Segment& seg = segs.s[si];                                                             \
  T* data = static_cast<T*>(seg.data);                                                         \
  const int64_t n = seg.n, offset = seg.offset;                                                \
  const uint64_t key = seg.key;                                                                \
  const int64_t nblk = (si + 1 < segs.count ? segs.s[si + 1].start : (int64_t)gridDim.x) - seg.start; \
  const int64_t first = offset / 4, last = (offset + n - 1) / 4;                               \
  const int64_t stride = nblk * blockDim.x;                                                    \
  for (int64_t b = first + ((int64_t)blockIdx.x - seg.start) * blockDim.x + threadIdx.x; b <= last; b += stride)

// Each segment its own row of coefficients; directions [0, d.split) rounded to T first, as the
// CPU's table_impl. A zero coefficient is skipped; a direction with the previous one's seed (the
// restore and the perturbation of one direction) reuses its z.
template <typename T, bool SR>
__global__ void __launch_bounds__(256) add_table_kernel(const __grid_constant__ Segments segs,
                                                        const __grid_constant__ Directions d, int dist, uint64_t rseed) {
  using C = typename Compute<T>::type;
  KZ_SEGMENT_BLOCKS {
    Span s = span(data, b, n, offset);
    C acc[4];
    load4(data, s, acc);
    float z[4];
    bool have = false;
    uint64_t zseed = 0;
    for (int i = 0; i < d.q; ++i) {
      if (i == d.split && i > 0) {
#pragma unroll
        for (int k = 0; k < 4; ++k) acc[k] = load(round_out<T>(acc[k], false, 0));
      }
      const double coef = d.coef[si][i];
      if (coef == 0.0) continue;
      if (!have || d.seed[i] != zseed) {
        values((uint64_t)b, key, d.seed[i], dist, z);
        have = true;
        zseed = d.seed[i];
      }
      const C c = (C)coef;
#pragma unroll
      for (int k = 0; k < 4; ++k) acc[k] = fma(c, (C)z[k], acc[k]);  // one rounding, as on the CPU
    }
    uint32_t w[4] = {0, 0, 0, 0};
    if constexpr (SR) { U4 r = philox((uint64_t)b, key, rseed); w[0] = r.x; w[1] = r.y; w[2] = r.z; w[3] = r.w; }
    T y[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) y[k] = round_out<T>(acc[k], SR, w[k]);
    store4(data, s, y);
  }
}

template <typename T>
__global__ void __launch_bounds__(256) fill_kernel(const __grid_constant__ Segments segs, uint64_t seed, int dist) {
  using C = typename Compute<T>::type;
  KZ_SEGMENT_BLOCKS {
    Span s = span(data, b, n, offset);
    float z[4];
    values((uint64_t)b, key, seed, dist, z);
    T y[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) y[k] = round_out<T>((C)z[k], false, 0);
    store4(data, s, y);
  }
}

// theta[i, j] += sum_k us[i, k] vt[k, j], accumulated in the compute type and rounded once: the
// reference's addmm on a row block, without the block's temporary. Rows grid-stride over
// blockIdx.y, columns over x (coalesced reads of theta and vt; us[i, :] is one cached row).
template <typename T>
__global__ void __launch_bounds__(256) lowrank_kernel(T* theta, int64_t m, int64_t n,
                                                      const typename Compute<T>::type* us,
                                                      const typename Compute<T>::type* vt, int r) {
  using C = typename Compute<T>::type;
  for (int64_t i = blockIdx.y; i < m; i += gridDim.y) {
    T* row = theta + i * n;
    const C* u = us + i * r;
    for (int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j < n; j += (int64_t)gridDim.x * blockDim.x) {
      C acc = load(row[j]);
      for (int k = 0; k < r; ++k) acc = fma(u[k], vt[k * n + j], acc);
      row[j] = round_out<T>(acc, false, 0);
    }
  }
}

constexpr int THREADS = 256;

template <typename F>
cudaError_t by_dtype(int dtype, F f) {
  switch (dtype) {
    case KZ_F32: f((float*)nullptr); break;
    case KZ_F64: f((double*)nullptr); break;
    case KZ_F16: f((__half*)nullptr); break;
    case KZ_BF16: f((__nv_bfloat16*)nullptr); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_lowrank(int dtype, void* theta, int64_t m, int64_t n, const void* us, const void* vt, int r,
                           int sms, cudaStream_t stream) {
  if (m == 0 || n == 0) return cudaSuccess;
  const int64_t x = (n + THREADS - 1) / THREADS, want = (int64_t)(sms > 0 ? sms : 80) * 16;
  const unsigned gx = (unsigned)(x < want ? x : want);
  int64_t y = want / gx;
  y = y < 1 ? 1 : (y > m ? m : (y > 65535 ? 65535 : y));
  const dim3 grid(gx, (unsigned)y);
  return by_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    using C = typename Compute<T>::type;
    lowrank_kernel<T><<<grid, THREADS, 0, stream>>>(static_cast<T*>(theta), m, n, static_cast<const C*>(us),
                                                    static_cast<const C*>(vt), r);
  });
}

unsigned plan_blocks(Segments& segs, int sms) {
  // Enough CUDA blocks for two waves at full occupancy, shared out in proportion to the work;
  // every tensor gets at least one and none more than it has work for.
  const int64_t budget = (int64_t)(sms > 0 ? sms : 80) * 16;
  int64_t work[MAX_SEGMENTS], total = 0;
  for (int i = 0; i < segs.count; ++i) {
    const Segment& g = segs.s[i];
    work[i] = (g.offset + g.n - 1) / 4 - g.offset / 4 + 1;
    total += work[i];
  }
  int64_t start = 0;
  for (int i = 0; i < segs.count; ++i) {
    int64_t need = (work[i] + THREADS - 1) / THREADS;
    int64_t share = (int64_t)((double)budget * (double)work[i] / (double)(total > 0 ? total : 1) + 0.5);
    int64_t blocks = need < share ? need : share;
    segs.s[i].start = start;
    start += blocks < 1 ? 1 : blocks;
  }
  return (unsigned)start;
}

cudaError_t launch_fill(const Segments& segs, uint64_t seed, int dist, unsigned grid, cudaStream_t stream) {
  return by_dtype(segs.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    fill_kernel<T><<<grid, THREADS, 0, stream>>>(segs, seed, dist);
  });
}

cudaError_t launch_add_table(const Segments& segs, int dist, const Directions& d, bool sr, uint64_t rseed,
                             unsigned grid, cudaStream_t stream) {
  return by_dtype(segs.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    constexpr bool low = std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value;
    if (low && sr) {
      add_table_kernel<T, low><<<grid, THREADS, 0, stream>>>(segs, d, dist, rseed);
    } else {
      add_table_kernel<T, false><<<grid, THREADS, 0, stream>>>(segs, d, dist, rseed);
    }
  });
}

}  // namespace kerzoo
