// Torch glue of the CUDA kernels: registers them for the CUDA dispatch key of the ops that
// kerzoo/engine/ops.py defines, and launches them on torch's current stream.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <algorithm>
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

int sms() {
  int dev = 0, n = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  return n;
}

void check(const at::Tensor& t) {
  TORCH_CHECK(t.is_contiguous(), "kerzoo: tensor must be contiguous");
  TORCH_CHECK(t.is_cuda(), "kerzoo: CUDA kernel called with a non-CUDA tensor");
}

void fill_z_cuda(at::Tensor out, int64_t seed, int64_t key, int64_t offset, int64_t dist) {
  check(out);
  if (out.numel() == 0) return;
  c10::cuda::CUDAGuard guard(out.device());
  C10_CUDA_CHECK(launch_fill(out.data_ptr(), dtype_code(out), out.numel(), offset, (uint64_t)key, (uint64_t)seed,
                             (int)dist, sms(), c10::cuda::getCurrentCUDAStream().stream()));
}

void add_z_multi_cuda(at::Tensor theta, at::ArrayRef<double> coefs, at::ArrayRef<int64_t> seeds, int64_t key,
                      int64_t offset, int64_t dist, bool stochastic_rounding, int64_t rounding_seed) {
  check(theta);
  TORCH_CHECK(coefs.size() == seeds.size(), "kerzoo: coefs and seeds differ in length");
  if (theta.numel() == 0) return;
  c10::cuda::CUDAGuard guard(theta.device());
  size_t total = coefs.size(), start = 0;
  do {
    Directions d{};
    d.q = (int)std::min<size_t>(MAX_DIRECTIONS, total - start);
    for (int i = 0; i < d.q; ++i) {
      // float32 coefficients unless the tensor is float64, as the CPU kernel and the reference
      d.coef[i] = theta.scalar_type() == at::kDouble ? coefs[start + i] : (double)(float)coefs[start + i];
      d.seed[i] = (uint64_t)seeds[start + i];
    }
    bool last = start + d.q >= total;
    C10_CUDA_CHECK(launch_add_multi(theta.data_ptr(), dtype_code(theta), theta.numel(), offset, (uint64_t)key,
                                    (int)dist, d, stochastic_rounding && last, (uint64_t)rounding_seed, sms(),
                                    c10::cuda::getCurrentCUDAStream().stream()));
    start += d.q;
  } while (start < total);
}

void restore_perturb_cuda(at::Tensor theta, double cr, int64_t sr, double cn, int64_t sn, int64_t key,
                          int64_t offset, int64_t dist) {
  check(theta);
  if (theta.numel() == 0) return;
  c10::cuda::CUDAGuard guard(theta.device());
  bool f64 = theta.scalar_type() == at::kDouble;
  C10_CUDA_CHECK(launch_restore_perturb(theta.data_ptr(), dtype_code(theta), theta.numel(), offset, (uint64_t)key,
                                        (int)dist, f64 ? cr : (double)(float)cr, (uint64_t)sr,
                                        f64 ? cn : (double)(float)cn, (uint64_t)sn, sms(),
                                        c10::cuda::getCurrentCUDAStream().stream()));
}

}  // namespace

TORCH_LIBRARY_IMPL(kerzoo, CUDA, m) {
  m.impl("fill_z", &fill_z_cuda);
  m.impl("add_z_multi", &add_z_multi_cuda);
  m.impl("restore_perturb", &restore_perturb_cuda);
}

}  // namespace kerzoo
