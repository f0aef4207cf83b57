// Torch glue of the CUDA kernels: registers them for the CUDA dispatch key of the ops that
// kerzoo/engine/ops.py defines, and launches them on torch's current stream. The foreach ops
// group their tensors by dtype and launch once per MAX_SEGMENTS tensors.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <algorithm>
#include <vector>
#include "kernels.h"

namespace kerzoo {
namespace {

int dtype_code(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return KZ_F32;
    case at::kDouble: return KZ_F64;
    case at::kHalf: return KZ_F16;
    case at::kBFloat16: return KZ_BF16;
    default: TORCH_CHECK(false, "kerzoo: unsupported dtype ", t.scalar_type(), "; use float32/64, float16 or bfloat16");
  }
}

int sms(int dev) {
  static int cached[64] = {0};
  if (dev < 0 || dev >= 64) dev = 0;
  if (!cached[dev]) C10_CUDA_CHECK(cudaDeviceGetAttribute(&cached[dev], cudaDevAttrMultiProcessorCount, dev));
  return cached[dev];
}

void check(const at::Tensor& t) {
  TORCH_CHECK(t.is_contiguous(), "kerzoo: tensor must be contiguous");
  TORCH_CHECK(t.is_cuda(), "kerzoo: CUDA kernel called with a non-CUDA tensor");
}

// Calls launch(segments, grid) for the tensors, grouped by dtype, MAX_SEGMENTS at a time.
template <typename F>
void for_segments(at::TensorList ts, at::IntArrayRef keys, at::IntArrayRef offsets, F launch) {
  TORCH_CHECK(keys.size() == ts.size() && offsets.size() == ts.size(), "kerzoo: ", ts.size(), " tensors but ",
              keys.size(), " keys and ", offsets.size(), " offsets");
  if (ts.empty()) return;
  const auto device = ts[0].device();
  for (const auto& t : ts) {
    check(t);
    TORCH_CHECK(t.device() == device, "kerzoo: all tensors of one call must be on one device, got ", device, " and ",
                t.device());
  }
  c10::cuda::CUDAGuard guard(device);
  const int n_sms = sms(device.index());
  for (int code : {KZ_F32, KZ_F64, KZ_F16, KZ_BF16}) {
    Segments segs{};
    segs.dtype = code;
    auto flush = [&] {
      if (segs.count == 0) return;
      unsigned grid = plan_blocks(segs, n_sms);
      C10_CUDA_CHECK(launch(segs, grid));
      segs.count = 0;
    };
    for (size_t i = 0; i < ts.size(); ++i) {
      if (ts[i].numel() == 0 || dtype_code(ts[i]) != code) continue;
      segs.s[segs.count++] = Segment{ts[i].data_ptr(), ts[i].numel(), offsets[i], (uint64_t)keys[i], 0};
      if (segs.count == MAX_SEGMENTS) flush();
    }
    flush();
  }
}

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

void fill_z_foreach_cuda(at::TensorList outs, int64_t seed, at::IntArrayRef keys, at::IntArrayRef offsets,
                         int64_t dist) {
  for_segments(outs, keys, offsets, [&](const Segments& segs, unsigned grid) {
    return launch_fill(segs, (uint64_t)seed, (int)dist, grid, stream());
  });
}

void add_z_multi_foreach_cuda(at::TensorList thetas, at::ArrayRef<double> coefs, at::ArrayRef<int64_t> seeds,
                              at::IntArrayRef keys, at::IntArrayRef offsets, int64_t dist, bool stochastic_rounding,
                              int64_t rounding_seed) {
  TORCH_CHECK(coefs.size() == seeds.size(), "kerzoo: coefs and seeds differ in length");
  if (coefs.empty()) return;
  for_segments(thetas, keys, offsets, [&](const Segments& segs, unsigned grid) {
    size_t total = coefs.size(), start = 0;
    cudaError_t err = cudaSuccess;
    do {
      Directions d{};
      d.q = (int)std::min<size_t>(MAX_DIRECTIONS, total - start);
      for (int i = 0; i < d.q; ++i) {
        // float32 coefficients unless the tensor is float64, as the CPU kernel and the reference
        d.coef[i] = segs.dtype == KZ_F64 ? coefs[start + i] : (double)(float)coefs[start + i];
        d.seed[i] = (uint64_t)seeds[start + i];
      }
      bool last = start + d.q >= total;
      err = launch_add_multi(segs, (int)dist, d, stochastic_rounding && last, (uint64_t)rounding_seed, grid,
                             stream());
      start += d.q;
    } while (err == cudaSuccess && start < total);
    return err;
  });
}

void restore_perturb_foreach_cuda(at::TensorList thetas, double cr, int64_t sr, double cn, int64_t sn,
                                  at::IntArrayRef keys, at::IntArrayRef offsets, int64_t dist) {
  for_segments(thetas, keys, offsets, [&](const Segments& segs, unsigned grid) {
    bool f64 = segs.dtype == KZ_F64;
    return launch_restore_perturb(segs, (int)dist, f64 ? cr : (double)(float)cr, (uint64_t)sr,
                                  f64 ? cn : (double)(float)cn, (uint64_t)sn, grid, stream());
  });
}

void fill_z_cuda(at::Tensor out, int64_t seed, int64_t key, int64_t offset, int64_t dist) {
  fill_z_foreach_cuda({out}, seed, {key}, {offset}, dist);
}

void add_z_multi_cuda(at::Tensor theta, at::ArrayRef<double> coefs, at::ArrayRef<int64_t> seeds, int64_t key,
                      int64_t offset, int64_t dist, bool stochastic_rounding, int64_t rounding_seed) {
  add_z_multi_foreach_cuda({theta}, coefs, seeds, {key}, {offset}, dist, stochastic_rounding, rounding_seed);
}

void restore_perturb_cuda(at::Tensor theta, double cr, int64_t sr, double cn, int64_t sn, int64_t key,
                          int64_t offset, int64_t dist) {
  restore_perturb_foreach_cuda({theta}, cr, sr, cn, sn, {key}, {offset}, dist);
}

void add_lowrank_cuda(at::Tensor theta, double c, at::Tensor u, at::Tensor s, at::Tensor v) {
  check(theta);
  TORCH_CHECK(theta.dim() == 2, "kerzoo: add_lowrank needs a 2-D theta");
  c10::cuda::CUDAGuard guard(theta.device());
  // as the reference: us = (U S) c and V^T in the compute type, small (m x r and r x n)
  const auto ct = theta.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor us = (u.to(theta.device(), ct).matmul(s.to(theta.device(), ct)) * c).contiguous();
  at::Tensor vt = v.to(theta.device(), ct).t().contiguous();
  C10_CUDA_CHECK(launch_lowrank(dtype_code(theta), theta.data_ptr(), theta.size(0), theta.size(1), us.data_ptr(),
                                vt.data_ptr(), (int)us.size(1), sms(theta.device().index()), stream()));
}

}  // namespace

TORCH_LIBRARY_IMPL(kerzoo, CUDA, m) {
  m.impl("fill_z", &fill_z_cuda);
  m.impl("add_z_multi", &add_z_multi_cuda);
  m.impl("restore_perturb", &restore_perturb_cuda);
  m.impl("fill_z_foreach", &fill_z_foreach_cuda);
  m.impl("add_z_multi_foreach", &add_z_multi_foreach_cuda);
  m.impl("restore_perturb_foreach", &restore_perturb_foreach_cuda);
  m.impl("add_lowrank", &add_lowrank_cuda);
}

}  // namespace kerzoo
