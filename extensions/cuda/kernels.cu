// CUDA kernels of the engine's ops, in plain CUDA (no torch headers): ops_cuda.cpp launches
// them on torch's current stream. One thread per block of four elements (one Philox call gives
// its four values), grid-stride loops, 4-wide vector loads and stores where aligned.
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
    float u = (float)((double)word * 2.3283064365386963e-10);
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
  } else {
    for (int k = s.l0; k < s.l1; ++k) x[k] = load(data[s.j0 + k]);
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
    for (int k = s.l0; k < s.l1; ++k) data[s.j0 + k] = y[k];
  }
}

#define KZ_BLOCKS                                                                       \
  int64_t first = offset / 4, last = (offset + n - 1) / 4;                              \
  int64_t stride = (int64_t)blockDim.x * gridDim.x;                                     \
  for (int64_t b = first + blockIdx.x * (int64_t)blockDim.x + threadIdx.x; b <= last; b += stride)

template <typename T>
__global__ void add_multi_kernel(T* data, int64_t n, int64_t offset, uint64_t key, int dist, Directions d,
                                 bool sr, uint64_t rseed) {
  using C = typename Compute<T>::type;
  KZ_BLOCKS {
    Span s = span(data, b, n, offset);
    C acc[4];
    load4(data, s, acc);
    for (int i = 0; i < d.q; ++i) {
      float z[4];
      values((uint64_t)b, key, d.seed[i], dist, z);
      C c = (C)d.coef[i];
#pragma unroll
      for (int k = 0; k < 4; ++k) acc[k] += c * (C)z[k];
    }
    uint32_t w[4] = {0, 0, 0, 0};
    if (sr) { U4 r = philox((uint64_t)b, key, rseed); w[0] = r.x; w[1] = r.y; w[2] = r.z; w[3] = r.w; }
    T y[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) y[k] = round_out<T>(acc[k], sr, w[k]);
    store4(data, s, y);
  }
}

template <typename T>
__global__ void restore_perturb_kernel(T* data, int64_t n, int64_t offset, uint64_t key, int dist, double cr,
                                       uint64_t sr_, double cn, uint64_t sn) {
  using C = typename Compute<T>::type;
  KZ_BLOCKS {
    Span s = span(data, b, n, offset);
    float zr[4], zn[4];
    values((uint64_t)b, key, sr_, dist, zr);
    if (sn == sr_) {
#pragma unroll
      for (int k = 0; k < 4; ++k) zn[k] = zr[k];
    } else {
      values((uint64_t)b, key, sn, dist, zn);
    }
    C x[4];
    load4(data, s, x);
    T y[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      T t = round_out<T>(x[k] + (C)cr * (C)zr[k], false, 0);
      y[k] = round_out<T>(load(t) + (C)cn * (C)zn[k], false, 0);
    }
    store4(data, s, y);
  }
}

template <typename T>
__global__ void fill_kernel(T* data, int64_t n, int64_t offset, uint64_t key, uint64_t seed, int dist) {
  using C = typename Compute<T>::type;
  KZ_BLOCKS {
    Span s = span(data, b, n, offset);
    float z[4];
    values((uint64_t)b, key, seed, dist, z);
    T y[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) y[k] = round_out<T>((C)z[k], false, 0);
    store4(data, s, y);
  }
}

unsigned grid_for(int64_t n, int sms) {
  int64_t blocks = (n / 4 + 2 + 255) / 256;
  int64_t cap = (int64_t)(sms > 0 ? sms : 80) * 32;
  return (unsigned)(blocks < 1 ? 1 : (blocks < cap ? blocks : cap));
}

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

cudaError_t launch_fill(void* data, int dtype, int64_t n, int64_t offset, uint64_t key, uint64_t seed, int dist,
                        int sms, cudaStream_t stream) {
  return by_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    fill_kernel<T><<<grid_for(n, sms), 256, 0, stream>>>((T*)data, n, offset, key, seed, dist);
  });
}

cudaError_t launch_add_multi(void* data, int dtype, int64_t n, int64_t offset, uint64_t key, int dist,
                             const Directions& d, bool sr, uint64_t rseed, int sms, cudaStream_t stream) {
  return by_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    add_multi_kernel<T><<<grid_for(n, sms), 256, 0, stream>>>((T*)data, n, offset, key, dist, d, sr, rseed);
  });
}

cudaError_t launch_restore_perturb(void* data, int dtype, int64_t n, int64_t offset, uint64_t key, int dist,
                                   double cr, uint64_t sr, double cn, uint64_t sn, int sms, cudaStream_t stream) {
  return by_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    restore_perturb_kernel<T><<<grid_for(n, sms), 256, 0, stream>>>((T*)data, n, offset, key, dist, cr, sr, cn, sn);
  });
}

}  // namespace kerzoo
