// CPU kernels of the engine's ops (fill_z, add_z_multi, restore_perturb), registered for the
// CPU dispatch key of the ops that kerzoo/engine/ops.py defines. Blocks of four elements share
// one Philox call; at::parallel_for splits the blocks over cores.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <vector>
#include "philox.h"

namespace kerzoo {
namespace {

template <typename T> struct Compute { using type = float; };
template <> struct Compute<double> { using type = double; };

template <typename T> inline T to_storage(typename Compute<T>::type v) { return static_cast<T>(v); }

template <typename T> inline uint16_t bits16(T v) { return v.x; }

// Stochastic rounding of float x to T (bf16/fp16), as reference.stochastic_round.
template <typename T> inline T stochastic(float x, uint32_t word) {
  T down = static_cast<T>(x);
  float down_f = static_cast<float>(down);
  bool up = x >= down_f;
  T other; other.x = next16(bits16(down), up);
  float gap = static_cast<float>(other) - down_f;
  float frac = gap != 0.0f ? (x - down_f) / gap : 0.0f;
  float u = static_cast<float>((double)word * 2.3283064365386963e-10);
  return u < frac ? other : down;
}

constexpr int64_t GRAIN = 2048;  // blocks of 4 elements per task
constexpr int V = 16;            // blocks generated together (SoA, vectorised)

// Values of blocks b0 .. b0 + V - 1, element-major: out[4 * i + lane].
inline void batch_values(uint64_t b0, uint64_t key, uint64_t seed, int dist, float* out) {
  uint32_t x[V], y[V], zz[V], w[V];
  const uint32_t k0s = (uint32_t)seed, k1s = (uint32_t)(seed >> 32);
  const uint32_t c2s = (uint32_t)key, c3s = (uint32_t)(key >> 32);
#pragma omp simd
  for (int i = 0; i < V; ++i) {
    uint64_t b = b0 + (uint64_t)i;
    uint32_t c0 = (uint32_t)b, c1 = (uint32_t)(b >> 32), c2 = c2s, c3 = c3s, k0 = k0s, k1 = k1s;
    for (int r = 0; r < 10; ++r) {
      if (r) { k0 += 0x9E3779B9u; k1 += 0xBB67AE85u; }
      uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
      uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
      c0 = n0; c1 = (uint32_t)p1; c2 = n2; c3 = (uint32_t)p0;
    }
    x[i] = c0; y[i] = c1; zz[i] = c2; w[i] = c3;
  }
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

// Calls f(first_local_index, count, z_of(direction) -> const float*) over runs of up to 4V elements;
// z pointers are aligned so that z[k] belongs to local index first + k.
template <typename F>
void for_batches(int64_t n, int64_t offset, F f) {
  if (n == 0) return;
  int64_t first = offset / 4, last = (offset + n - 1) / 4;
  int64_t nbatches = (last - first) / V + 1;
  at::parallel_for(0, nbatches, std::max<int64_t>(1, GRAIN / V), [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      int64_t b0 = first + q * V;
      int64_t j0 = std::max<int64_t>(b0 * 4, offset), j1 = std::min<int64_t>((b0 + V) * 4, offset + n);
      f(b0, j0 - offset, j1 - j0, (int)(j0 - b0 * 4));
    }
  });
}

template <typename T>
void add_multi_impl(T* data, int64_t n, const std::vector<double>& coefs, const std::vector<int64_t>& seeds,
                    uint64_t key, int64_t offset, int dist, bool sr, uint64_t rseed) {
  using C = typename Compute<T>::type;
  for_batches(n, offset, [&](int64_t b0, int64_t l0, int64_t cnt, int skip) {
    C acc[4 * V];
    float z[4 * V];
    T* d = data + l0;
    for (int64_t k = 0; k < cnt; ++k) acc[k] = static_cast<C>(d[k]);
    for (size_t i = 0; i < coefs.size(); ++i) {
      if (coefs[i] == 0.0) continue;
      batch_values((uint64_t)b0, key, (uint64_t)seeds[i], dist, z);
      const C c = static_cast<C>(coefs[i]);
      const float* zs = z + skip;
#pragma omp simd
      for (int64_t k = 0; k < cnt; ++k) acc[k] += c * static_cast<C>(zs[k]);
    }
    if constexpr (std::is_same<T, c10::BFloat16>::value || std::is_same<T, c10::Half>::value) {
      if (sr) {
        for (int64_t k = 0; k < cnt; ++k) {
          int64_t j = offset + l0 + k;
          d[k] = stochastic<T>((float)acc[k], block_word((uint64_t)(j / 4), key, rseed, (int)(j % 4)));
        }
        return;
      }
    }
    for (int64_t k = 0; k < cnt; ++k) d[k] = static_cast<T>(acc[k]);
  });
}

template <typename T>
void restore_perturb_impl(T* data, int64_t n, double cr, int64_t sr_, double cn, int64_t sn, uint64_t key,
                          int64_t offset, int dist) {
  using C = typename Compute<T>::type;
  for_batches(n, offset, [&](int64_t b0, int64_t l0, int64_t cnt, int skip) {
    float zr[4 * V], zn[4 * V];
    batch_values((uint64_t)b0, key, (uint64_t)sr_, dist, zr);
    const float* pn = zr;
    if (sn != sr_) { batch_values((uint64_t)b0, key, (uint64_t)sn, dist, zn); pn = zn; }
    T* d = data + l0;
    const C a = static_cast<C>(cr), b = static_cast<C>(cn);
    for (int64_t k = 0; k < cnt; ++k) {
      T t = static_cast<T>(static_cast<C>(d[k]) + a * static_cast<C>(zr[skip + k]));
      d[k] = static_cast<T>(static_cast<C>(t) + b * static_cast<C>(pn[skip + k]));
    }
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

void add_z_multi_cpu(at::Tensor theta, at::ArrayRef<double> coefs, at::ArrayRef<int64_t> seeds, int64_t key,
                     int64_t offset, int64_t dist, bool stochastic_rounding, int64_t rounding_seed) {
  check(theta);
  TORCH_CHECK(coefs.size() == seeds.size(), "kerzoo: coefs and seeds differ in length");
  std::vector<double> c(coefs.begin(), coefs.end());
  std::vector<int64_t> s(seeds.begin(), seeds.end());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, theta.scalar_type(), "kerzoo_add_z_multi", [&] {
    add_multi_impl<scalar_t>(theta.data_ptr<scalar_t>(), theta.numel(), c, s, (uint64_t)key, offset, (int)dist,
                             stochastic_rounding, (uint64_t)rounding_seed);
  });
}

void restore_perturb_cpu(at::Tensor theta, double cr, int64_t sr, double cn, int64_t sn, int64_t key,
                         int64_t offset, int64_t dist) {
  check(theta);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, theta.scalar_type(), "kerzoo_restore_perturb", [&] {
    restore_perturb_impl<scalar_t>(theta.data_ptr<scalar_t>(), theta.numel(), cr, sr, cn, sn, (uint64_t)key,
                                   offset, (int)dist);
  });
}

void check_lists(at::TensorList ts, at::IntArrayRef keys, at::IntArrayRef offsets) {
  TORCH_CHECK(keys.size() == ts.size() && offsets.size() == ts.size(), "kerzoo: ", ts.size(), " tensors but ",
              keys.size(), " keys and ", offsets.size(), " offsets");
}

void fill_z_foreach_cpu(at::TensorList outs, int64_t seed, at::IntArrayRef keys, at::IntArrayRef offsets,
                        int64_t dist) {
  check_lists(outs, keys, offsets);
  for (size_t i = 0; i < outs.size(); ++i) fill_z_cpu(outs[i], seed, keys[i], offsets[i], dist);
}

void add_z_multi_foreach_cpu(at::TensorList thetas, at::ArrayRef<double> coefs, at::ArrayRef<int64_t> seeds,
                             at::IntArrayRef keys, at::IntArrayRef offsets, int64_t dist, bool stochastic_rounding,
                             int64_t rounding_seed) {
  check_lists(thetas, keys, offsets);
  for (size_t i = 0; i < thetas.size(); ++i)
    add_z_multi_cpu(thetas[i], coefs, seeds, keys[i], offsets[i], dist, stochastic_rounding, rounding_seed);
}

void restore_perturb_foreach_cpu(at::TensorList thetas, double cr, int64_t sr, double cn, int64_t sn,
                                 at::IntArrayRef keys, at::IntArrayRef offsets, int64_t dist) {
  check_lists(thetas, keys, offsets);
  for (size_t i = 0; i < thetas.size(); ++i) restore_perturb_cpu(thetas[i], cr, sr, cn, sn, keys[i], offsets[i], dist);
}

}  // namespace

TORCH_LIBRARY_IMPL(kerzoo, CPU, m) {
  m.impl("fill_z", &fill_z_cpu);
  m.impl("add_z_multi", &add_z_multi_cpu);
  m.impl("restore_perturb", &restore_perturb_cpu);
  m.impl("fill_z_foreach", &fill_z_foreach_cpu);
  m.impl("add_z_multi_foreach", &add_z_multi_foreach_cpu);
  m.impl("restore_perturb_foreach", &restore_perturb_foreach_cpu);
}

}  // namespace kerzoo
