// Torch glue of the CUDA kernels: registers them for the CUDA dispatch key of the ops that
// kerzoo/engine/ops.py defines, and launches them on torch's current stream. The list ops group
// their tensors by dtype and launch once per MAX_SEGMENTS tensors.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <algorithm>
#include <vector>
#include "kernels.h"
#include "../csrc/table.h"

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

// Calls launch(segments, index, grid) for the tensors, grouped by dtype, MAX_SEGMENTS at a time;
// index[s] is segment s's position in ts.
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
    int64_t index[MAX_SEGMENTS];
    auto flush = [&] {
      if (segs.count == 0) return;
      unsigned grid = plan_blocks(segs, n_sms);
      C10_CUDA_CHECK(launch(segs, index, grid));
      segs.count = 0;
    };
    for (size_t i = 0; i < ts.size(); ++i) {
      if (ts[i].numel() == 0 || dtype_code(ts[i]) != code) continue;
      index[segs.count] = (int64_t)i;
      segs.s[segs.count++] = Segment{ts[i].data_ptr(), ts[i].numel(), offsets[i], (uint64_t)keys[i], 0};
      if (segs.count == MAX_SEGMENTS) flush();
    }
    flush();
  }
}

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

void fill_z_foreach_cuda(at::TensorList outs, int64_t seed, at::IntArrayRef keys, at::IntArrayRef offsets,
                         int64_t dist) {
  for_segments(outs, keys, offsets, [&](const Segments& segs, const int64_t*, unsigned grid) {
    return launch_fill(segs, (uint64_t)seed, (int)dist, grid, stream());
  });
}

void add_z_table_cuda(at::TensorList thetas, const at::Tensor& coefs, at::IntArrayRef seeds, at::IntArrayRef keys,
                      at::IntArrayRef offsets, int64_t dist, int64_t split, bool stochastic_rounding,
                      int64_t rounding_seed) {
  TORCH_CHECK(keys.size() == thetas.size() && offsets.size() == thetas.size(), "kerzoo: ", thetas.size(),
              " tensors but ", keys.size(), " keys and ", offsets.size(), " offsets");
  const Merged m = merge_table(coefs, seeds, split, (int64_t)thetas.size());
  // the tensors with a nonzero row: the others are left as they are, unread
  std::vector<at::Tensor> ts;
  std::vector<int64_t> ks, os, rows;
  for (size_t t = 0; t < thetas.size(); ++t) {
    if (m.zero((int64_t)t)) continue;
    ts.push_back(thetas[t]);
    ks.push_back(keys[t]);
    os.push_back(offsets[t]);
    rows.push_back((int64_t)t);
  }
  const size_t q = m.seeds.size(), mid = m.split;
  // launches of up to MAX_DIRECTIONS directions: [a, b), rounded first at local direction `at`
  // (0: once), the last of phase 2 stochastically if asked. One launch holds both phases when
  // they fit, so a move from point to point is one pass.
  struct Part { size_t a, b, at; bool sr; };
  std::vector<Part> parts;
  if (q <= (size_t)MAX_DIRECTIONS) {
    parts.push_back({0, q, mid, stochastic_rounding && mid < q});
  } else {
    for (size_t a = 0; a < mid; a += MAX_DIRECTIONS) parts.push_back({a, std::min(mid, a + MAX_DIRECTIONS), 0, false});
    for (size_t a = mid; a < q; a += MAX_DIRECTIONS) {
      const size_t b = std::min(q, a + MAX_DIRECTIONS);
      parts.push_back({a, b, 0, stochastic_rounding && b == q});
    }
  }
  for_segments(ts, ks, os, [&](const Segments& segs, const int64_t* index, unsigned grid) {
    const bool f64 = segs.dtype == KZ_F64;
    cudaError_t err = cudaSuccess;
    for (const Part& p : parts) {
      Directions d{};
      d.q = (int)(p.b - p.a);
      d.split = (int)p.at;
      for (int i = 0; i < d.q; ++i) d.seed[i] = (uint64_t)m.seeds[p.a + i];
      for (int s = 0; s < segs.count; ++s) {
        const double* row = m.row(rows[index[s]]);
        // float32 coefficients unless the tensor is float64, as the CPU kernel and the reference
        for (int i = 0; i < d.q; ++i) d.coef[s][i] = f64 ? row[p.a + i] : (double)(float)row[p.a + i];
      }
      err = launch_add_table(segs, (int)dist, d, p.sr, (uint64_t)rounding_seed, grid, stream());
      if (err != cudaSuccess) break;
    }
    return err;
  });
}

void fill_z_cuda(at::Tensor out, int64_t seed, int64_t key, int64_t offset, int64_t dist) {
  fill_z_foreach_cuda({out}, seed, {key}, {offset}, dist);
}

// The single-tensor ops: a table of one row.
void add_z_multi_cuda(at::Tensor theta, at::ArrayRef<double> coefs, at::ArrayRef<int64_t> seeds, int64_t key,
                      int64_t offset, int64_t dist, bool stochastic_rounding, int64_t rounding_seed) {
  TORCH_CHECK(coefs.size() == seeds.size(), "kerzoo: coefs and seeds differ in length");
  const at::Tensor row = at::tensor(coefs, at::kDouble).view({1, (int64_t)coefs.size()});
  add_z_table_cuda({theta}, row, seeds, {key}, {offset}, dist, 0, stochastic_rounding, rounding_seed);
}

void restore_perturb_cuda(at::Tensor theta, double cr, int64_t sr, double cn, int64_t sn, int64_t key,
                          int64_t offset, int64_t dist) {
  const at::Tensor row = at::tensor({cr, cn}, at::kDouble).view({1, 2});
  add_z_table_cuda({theta}, row, {sr, sn}, {key}, {offset}, dist, 1, false, 0);
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
  m.impl("add_z_table", &add_z_table_cuda);
  m.impl("add_lowrank", &add_lowrank_cuda);
}

}  // namespace kerzoo
