// CPU kernels of the engine's ops (fill_z, add_z_table and the ops it serves), registered for the
// CPU dispatch key of the ops that kerzoo/engine/ops.py defines. Blocks of four elements share
// one Philox call; at::parallel_for splits the blocks over cores.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <atomic>
#include <cmath>
#include <vector>
#if defined(__AVX2__)
#include <immintrin.h>
#endif
#include "philox.h"
#include "table.h"

namespace kerzoo {
namespace {

template <typename T> struct Compute { using type = float; };
template <> struct Compute<double> { using type = double; };

template <typename T> inline T to_storage(typename Compute<T>::type v) { return static_cast<T>(v); }

template <typename T> inline uint16_t bits16(T v) { return v.x; }

// Stochastic rounding of float x to T (bf16/fp16), as reference.stochastic_round. Written without
// branches: the up/down decisions are random, and mispredicted branches cost ~8x the arithmetic.
template <typename T> inline T stochastic(float x, uint32_t word) {
  const T down = static_cast<T>(x);
  const float down_f = static_cast<float>(down);
  const uint16_t b = bits16(down);
  const uint16_t up = x >= down_f, neg = b >> 15, zero = (b & 0x7FFF) == 0;
  // the neighbour one step toward x: next16(b, up) (a signed zero steps to the smallest subnormal)
  const uint16_t away = (uint16_t)(b + ((up ^ neg) ? 1 : 0xFFFF));
  const uint16_t from_zero = (uint16_t)(0x8001 - (up << 15));
  const uint16_t zmask = (uint16_t)-zero;
  T other;
  other.x = (uint16_t)((from_zero & zmask) | (away & ~zmask));
  const float gap = static_cast<float>(other) - down_f;
  const float frac = gap != 0.0f ? (x - down_f) / gap : 0.0f;
  const float u = static_cast<float>((double)word * 2.3283064365386963e-10);
  const uint16_t pick = (uint16_t)-(uint16_t)(u < frac);
  T out;
  out.x = (uint16_t)((other.x & pick) | (b & ~pick));
  return out;
}

constexpr int64_t GRAIN = 2048;  // blocks of 4 elements per task
constexpr int V = 32;            // blocks generated together (SoA, vectorised)

#if defined(__AVX2__)
// Philox4x32-10 on 8 blocks per 256-bit register (AVX2 has no 32x32->64 multiply of all
// lanes: even and odd lanes are multiplied apart and blended), four registers interleaved.
inline void philox_soa(uint64_t b0, uint64_t key, uint64_t seed, uint32_t* x, uint32_t* y, uint32_t* z,
                       uint32_t* w) {
  constexpr int G = V / 8;
  const __m256i M0 = _mm256_set1_epi32((int)0xD2511F53u), M1 = _mm256_set1_epi32((int)0xCD9E8D57u);
  const __m256i sign = _mm256_set1_epi32((int)0x80000000u);
  __m256i c0[G], c1[G], c2[G], c3[G];
  for (int g = 0; g < G; ++g) {
    uint64_t b = b0 + 8 * (uint64_t)g;
    __m256i lo = _mm256_set1_epi32((int)(uint32_t)b);
    c0[g] = _mm256_add_epi32(lo, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    // a lane whose low word wrapped carries one into the high word (unsigned compare)
    __m256i wrapped = _mm256_cmpgt_epi32(_mm256_xor_si256(lo, sign), _mm256_xor_si256(c0[g], sign));
    c1[g] = _mm256_sub_epi32(_mm256_set1_epi32((int)(uint32_t)(b >> 32)), wrapped);
    c2[g] = _mm256_set1_epi32((int)(uint32_t)key);
    c3[g] = _mm256_set1_epi32((int)(uint32_t)(key >> 32));
  }
  uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    const __m256i K0 = _mm256_set1_epi32((int)k0), K1 = _mm256_set1_epi32((int)k1);
    for (int g = 0; g < G; ++g) {
      __m256i pe0 = _mm256_mul_epu32(c0[g], M0), po0 = _mm256_mul_epu32(_mm256_srli_epi64(c0[g], 32), M0);
      __m256i pe1 = _mm256_mul_epu32(c2[g], M1), po1 = _mm256_mul_epu32(_mm256_srli_epi64(c2[g], 32), M1);
      __m256i hi0 = _mm256_blend_epi32(_mm256_srli_epi64(pe0, 32), po0, 0xAA);
      __m256i lo0 = _mm256_blend_epi32(pe0, _mm256_slli_epi64(po0, 32), 0xAA);
      __m256i hi1 = _mm256_blend_epi32(_mm256_srli_epi64(pe1, 32), po1, 0xAA);
      __m256i lo1 = _mm256_blend_epi32(pe1, _mm256_slli_epi64(po1, 32), 0xAA);
      c0[g] = _mm256_xor_si256(_mm256_xor_si256(hi1, c1[g]), K0);
      c2[g] = _mm256_xor_si256(_mm256_xor_si256(hi0, c3[g]), K1);
      c1[g] = lo1;
      c3[g] = lo0;
    }
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  for (int g = 0; g < G; ++g) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(x + 8 * g), c0[g]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + 8 * g), c1[g]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(z + 8 * g), c2[g]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w + 8 * g), c3[g]);
  }
}
#else
inline void philox_soa(uint64_t b0, uint64_t key, uint64_t seed, uint32_t* x, uint32_t* y, uint32_t* z,
                       uint32_t* w) {
  for (int i = 0; i < V; ++i) {
    U4 r = philox(b0 + (uint64_t)i, key, seed);
    x[i] = r.x; y[i] = r.y; z[i] = r.z; w[i] = r.w;
  }
}
#endif

// Values of blocks b0 .. b0 + V - 1, element-major: out[4 * i + lane].
inline void batch_values(uint64_t b0, uint64_t key, uint64_t seed, int dist, float* out) {
  alignas(32) uint32_t x[V], y[V], zz[V], w[V];
  philox_soa(b0, key, seed, x, y, zz, w);
  float o0[V], o1[V], o2[V], o3[V];
  if (dist == 0) {
#pragma omp simd
    for (int i = 0; i < V; ++i) {
      float u0 = uniform01(x[i]), u1 = uniform01(y[i]), u2 = uniform01(zz[i]), u3 = uniform01(w[i]);
      float ra = sqrtf(-2.0f * fast_log(u0)), rb = sqrtf(-2.0f * fast_log(u2));
      float sa, ca, sb, cb;
      fast_sincos_2pi(u1 - rintf(u1), &sa, &ca);
      fast_sincos_2pi(u3 - rintf(u3), &sb, &cb);
      o0[i] = ra * ca; o1[i] = ra * sa; o2[i] = rb * cb; o3[i] = rb * sb;
    }
  } else {
#pragma omp simd
    for (int i = 0; i < V; ++i) {
      o0[i] = (x[i] >> 31) ? -1.0f : 1.0f; o1[i] = (y[i] >> 31) ? -1.0f : 1.0f;
      o2[i] = (zz[i] >> 31) ? -1.0f : 1.0f; o3[i] = (w[i] >> 31) ? -1.0f : 1.0f;
    }
  }
  for (int i = 0; i < V; ++i) {
    out[4 * i] = o0[i]; out[4 * i + 1] = o1[i]; out[4 * i + 2] = o2[i]; out[4 * i + 3] = o3[i];
  }
}

// Calls f(first_block, first_local_index, count, skip) over runs of up to 4V elements; the z of
// element first_local_index + k is z[skip + k] of the batch of blocks that starts at first_block.
// Threads take chunks of GRAIN blocks from a shared counter rather than one fixed share each, so
// that a core slowed by another process does not hold the others up.
template <typename F>
void for_batches(int64_t n, int64_t offset, F f) {
  if (n == 0) return;
  const int64_t first = offset / 4, last = (offset + n - 1) / 4;
  const int64_t nbatches = (last - first) / V + 1, chunk = std::max<int64_t>(1, GRAIN / V);
  auto run = [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      int64_t b0 = first + q * V;
      int64_t j0 = std::max<int64_t>(b0 * 4, offset), j1 = std::min<int64_t>((b0 + V) * 4, offset + n);
      f(b0, j0 - offset, j1 - j0, (int)(j0 - b0 * 4));
    }
  };
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), (nbatches + chunk - 1) / chunk);
  if (workers <= 1 || at::in_parallel_region()) return run(0, nbatches);
  std::atomic<int64_t> next{0};
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    for (int64_t q0; (q0 = next.fetch_add(chunk)) < nbatches;) run(q0, std::min(q0 + chunk, nbatches));
  });
}

// theta += sum_{i < split} coef[i] z(seed[i]), rounded to T (only where 0 < split < q), then
// += sum_{i >= split} coef[i] z(seed[i]), rounded to T (stochastically for bf16/fp16 if sr): each
// phase one rounding per element, as add_z_table (table.h). A zero coefficient is skipped; a
// direction whose seed is the previous one's reuses its z.
template <typename T>
void table_impl(T* data, int64_t n, const double* coef, const int64_t* seed, size_t q, size_t split,
                uint64_t key, int64_t offset, int dist, bool sr, uint64_t rseed) {
  using C = typename Compute<T>::type;
  const bool mid = split > 0 && split < q;
  sr = sr && split < q;  // phase 2 holds the last rounding: with no phase 2 it was phase 1's
  for_batches(n, offset, [&](int64_t b0, int64_t l0, int64_t cnt, int skip) {
    C acc[4 * V];
    float z[4 * V];
    bool have = false;
    int64_t zseed = 0;
    T* d = data + l0;
    for (int64_t k = 0; k < cnt; ++k) acc[k] = static_cast<C>(d[k]);
    for (size_t i = 0; i < q; ++i) {
      if (mid && i == split)
        for (int64_t k = 0; k < cnt; ++k) acc[k] = static_cast<C>(static_cast<T>(acc[k]));
      if (coef[i] == 0.0) continue;
      if (!have || seed[i] != zseed) {
        batch_values((uint64_t)b0, key, (uint64_t)seed[i], dist, z);
        have = true;
        zseed = seed[i];
      }
      const C c = static_cast<C>(coef[i]);
      const float* zs = z + skip;
#pragma omp simd
      for (int64_t k = 0; k < cnt; ++k) acc[k] = std::fma(c, static_cast<C>(zs[k]), acc[k]);  // one rounding
    }
    if constexpr (std::is_same<T, c10::BFloat16>::value || std::is_same<T, c10::Half>::value) {
      if (sr) {  // rounding words of the same blocks under the rounding seed, generated as a batch
        alignas(32) uint32_t wx[V], wy[V], wz[V], ww[V];
        philox_soa((uint64_t)b0, key, rseed, wx, wy, wz, ww);
        const uint32_t* lanes[4] = {wx, wy, wz, ww};
        for (int64_t k = 0; k < cnt; ++k) {
          const int64_t e = skip + k;  // element e of the batch: block e / 4, lane e % 4
          d[k] = stochastic<T>((float)acc[k], lanes[e % 4][e / 4]);
        }
        return;
      }
    }
    for (int64_t k = 0; k < cnt; ++k) d[k] = static_cast<T>(acc[k]);
  });
}

template <typename T>
void fill_impl(T* data, int64_t n, uint64_t seed, uint64_t key, int64_t offset, int dist) {
  for_batches(n, offset, [&](int64_t b0, int64_t l0, int64_t cnt, int skip) {
    float z[4 * V];
    batch_values((uint64_t)b0, key, seed, dist, z);
    for (int64_t k = 0; k < cnt; ++k) data[l0 + k] = static_cast<T>(z[skip + k]);
  });
}

void check(const at::Tensor& t) {
  TORCH_CHECK(t.is_contiguous(), "kerzoo: tensor must be contiguous");
  TORCH_CHECK(t.device().is_cpu(), "kerzoo: CPU kernel called with a non-CPU tensor");
}

void fill_z_cpu(at::Tensor out, int64_t seed, int64_t key, int64_t offset, int64_t dist) {
  check(out);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "kerzoo_fill_z", [&] {
    fill_impl<scalar_t>(out.data_ptr<scalar_t>(), out.numel(), (uint64_t)seed, (uint64_t)key, offset, (int)dist);
  });
}

void check_lists(at::TensorList ts, at::IntArrayRef keys, at::IntArrayRef offsets) {
  TORCH_CHECK(keys.size() == ts.size() && offsets.size() == ts.size(), "kerzoo: ", ts.size(), " tensors but ",
              keys.size(), " keys and ", offsets.size(), " offsets");
}

void add_z_table_cpu(at::TensorList thetas, const at::Tensor& coefs, at::IntArrayRef seeds, at::IntArrayRef keys,
                     at::IntArrayRef offsets, int64_t dist, int64_t split, bool stochastic_rounding,
                     int64_t rounding_seed) {
  check_lists(thetas, keys, offsets);
  const Merged m = merge_table(coefs, seeds, split, (int64_t)thetas.size());
  for (size_t t = 0; t < thetas.size(); ++t) {
    const at::Tensor& theta = thetas[t];
    check(theta);
    if (m.zero((int64_t)t)) continue;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, theta.scalar_type(), "kerzoo_add_z_table", [&] {
      table_impl<scalar_t>(theta.data_ptr<scalar_t>(), theta.numel(), m.row((int64_t)t), m.seeds.data(),
                           m.seeds.size(), m.split, (uint64_t)keys[t], offsets[t], (int)dist, stochastic_rounding,
                           (uint64_t)rounding_seed);
    });
  }
}

// The single-tensor ops: a table of one row.
void add_z_multi_cpu(at::Tensor theta, at::ArrayRef<double> coefs, at::ArrayRef<int64_t> seeds, int64_t key,
                     int64_t offset, int64_t dist, bool stochastic_rounding, int64_t rounding_seed) {
  TORCH_CHECK(coefs.size() == seeds.size(), "kerzoo: coefs and seeds differ in length");
  const at::Tensor row = at::tensor(coefs, at::kDouble).view({1, (int64_t)coefs.size()});
  add_z_table_cpu({theta}, row, seeds, {key}, {offset}, dist, 0, stochastic_rounding, rounding_seed);
}

void restore_perturb_cpu(at::Tensor theta, double cr, int64_t sr, double cn, int64_t sn, int64_t key,
                         int64_t offset, int64_t dist) {
  const at::Tensor row = at::tensor({cr, cn}, at::kDouble).view({1, 2});
  add_z_table_cpu({theta}, row, {sr, sn}, {key}, {offset}, dist, 1, false, 0);
}

void fill_z_foreach_cpu(at::TensorList outs, int64_t seed, at::IntArrayRef keys, at::IntArrayRef offsets,
                        int64_t dist) {
  check_lists(outs, keys, offsets);
  for (size_t i = 0; i < outs.size(); ++i) fill_z_cpu(outs[i], seed, keys[i], offsets[i], dist);
}

}  // namespace

TORCH_LIBRARY_IMPL(kerzoo, CPU, m) {
  m.impl("fill_z", &fill_z_cpu);
  m.impl("add_z_multi", &add_z_multi_cpu);
  m.impl("restore_perturb", &restore_perturb_cpu);
  m.impl("fill_z_foreach", &fill_z_foreach_cpu);
  m.impl("add_z_table", &add_z_table_cpu);
}

}  // namespace kerzoo
