// Philox4x32-10 and the element-wise kernels shared by the CPU and CUDA backends.
// The same function as kerzoo/engine/philox.py (the reference): see docs/engine.md.
#pragma once
#include <cstdint>
#include <cmath>

#if defined(__CUDACC__)
#define KZ_HD __host__ __device__ __forceinline__
#else
#define KZ_HD inline
#endif

namespace kerzoo {

struct U4 { uint32_t x, y, z, w; };

KZ_HD uint32_t mulhilo(uint32_t a, uint32_t b, uint32_t* hi) {
  uint64_t p = (uint64_t)a * (uint64_t)b;
  *hi = (uint32_t)(p >> 32);
  return (uint32_t)p;
}

KZ_HD U4 philox(uint64_t block, uint64_t key, uint64_t seed) {
  uint32_t c0 = (uint32_t)block, c1 = (uint32_t)(block >> 32);
  uint32_t c2 = (uint32_t)key, c3 = (uint32_t)(key >> 32);
  uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
#pragma unroll
  for (int r = 0; r < 10; ++r) {
    if (r) { k0 += 0x9E3779B9u; k1 += 0xBB67AE85u; }
    uint32_t hi0, hi1;
    uint32_t lo0 = mulhilo(0xD2511F53u, c0, &hi0);
    uint32_t lo1 = mulhilo(0xCD9E8D57u, c2, &hi1);
    uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
  }
  return U4{c0, c1, c2, c3};
}

KZ_HD float uniform01(uint32_t x) {
  // as cuRAND: x * 2^-32 + 2^-33, in float32
  return (float)x * 2.3283064365386963e-10f + 1.1641532182693481e-10f;
}

// log(u) for u in (0, 1], and (sin, cos) of 2 pi t for t in [-1/2, 1/2], in plain float arithmetic
// that the compiler vectorises (libm's calls it does not); a few ulp from libm.
KZ_HD float fast_log(float u) {
  union { float f; int32_t i; } v{u};
  int32_t e = ((v.i >> 23) & 0xff) - 127;
  v.i = (v.i & 0x7fffff) | 0x3f800000;  // mantissa in [1, 2)
  float m = v.f;
  if (m > 1.41421356f) { m *= 0.5f; e += 1; }
  float s = (m - 1.0f) / (m + 1.0f), s2 = s * s;
  float lm = 2.0f * s * (1.0f + s2 * (0.33333333f + s2 * (0.2f + s2 * (0.14285715f + s2 * 0.11111111f))));
  float fe = (float)e;
  return fe * 0.693145752f + (fe * 1.42860677e-06f + lm);
}

KZ_HD void fast_sincos_2pi(float t, float* sn, float* cs) {
  float q = rintf(t * 4.0f);
  float x = (t - q * 0.25f) * 6.28318530717958648f;  // [-pi/4, pi/4]
  float x2 = x * x;
  float s = x * (1.0f + x2 * (-1.6666667e-1f + x2 * (8.3333333e-3f + x2 * (-1.984127e-4f + x2 * 2.7557319e-6f))));
  float c = 1.0f + x2 * (-0.5f + x2 * (4.1666667e-2f + x2 * (-1.3888889e-3f + x2 * 2.4801587e-5f)));
  int k = ((int)q) & 3;
  float rs = (k == 0) ? s : (k == 1) ? c : (k == 2) ? -s : -c;
  float rc = (k == 0) ? c : (k == 1) ? -s : (k == 2) ? -c : s;
  *sn = rs; *cs = rc;
}

// The four values of one block: Gaussian (Box-Muller on (x, y) and (z, w)) or Rademacher.
KZ_HD void block_values(uint64_t block, uint64_t key, uint64_t seed, int dist, float out[4]) {
  U4 r = philox(block, key, seed);
  if (dist == 0) {
    const float two_pi = 6.283185307179586f;
    float u0 = uniform01(r.x), u1 = uniform01(r.y), u2 = uniform01(r.z), u3 = uniform01(r.w);
    float ra = sqrtf(-2.0f * logf(u0)), rb = sqrtf(-2.0f * logf(u2));
    float a = two_pi * u1, b = two_pi * u3;
    out[0] = ra * cosf(a); out[1] = ra * sinf(a);
    out[2] = rb * cosf(b); out[3] = rb * sinf(b);
  } else {
    out[0] = (r.x >> 31) ? -1.0f : 1.0f; out[1] = (r.y >> 31) ? -1.0f : 1.0f;
    out[2] = (r.z >> 31) ? -1.0f : 1.0f; out[3] = (r.w >> 31) ? -1.0f : 1.0f;
  }
}

KZ_HD uint32_t block_word(uint64_t block, uint64_t key, uint64_t seed, int lane) {
  U4 r = philox(block, key, seed);
  return lane == 0 ? r.x : lane == 1 ? r.y : lane == 2 ? r.z : r.w;
}

// bf16/fp16 neighbours by bit pattern: one step toward +inf (up) or -inf.
KZ_HD uint16_t next16(uint16_t b, bool up) {
  bool neg = b & 0x8000;
  if (up) { if (b == 0x8000) return 0x0001; return neg ? b - 1 : b + 1; }
  if (b == 0x0000) return 0x8001;
  return neg ? b + 1 : b - 1;
}

}  // namespace kerzoo
