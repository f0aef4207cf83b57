// A coefficient table (one row per tensor, one column per direction) as the kernels of add_z_table
// apply it, shared by the CPU and CUDA glue. Columns [0, split) are phase 1, rounded to the
// tensor's dtype on their own (the restore of a move from point to point), columns [split, q)
// phase 2, rounded as asked. Within a phase, columns with one seed are one direction: their
// coefficients are summed in float64, in column order (as kerzoo.engine merges repeated seeds).
#pragma once
#include <ATen/ATen.h>
#include <cstdint>
#include <vector>

namespace kerzoo {

struct Merged {
  std::vector<int64_t> seeds;  // the directions: phase 1's, then phase 2's
  size_t split = 0;            // how many of them are phase 1's
  std::vector<double> coef;    // rows x seeds.size()
  const double* row(int64_t t) const { return coef.data() + t * (int64_t)seeds.size(); }
  bool zero(int64_t t) const {
    for (size_t i = 0; i < seeds.size(); ++i)
      if (row(t)[i] != 0.0) return false;
    return true;
  }
};

inline Merged merge_table(const at::Tensor& coefs, at::IntArrayRef seeds, int64_t split, int64_t rows) {
  const int64_t q = (int64_t)seeds.size();
  TORCH_CHECK(coefs.dim() == 2 && coefs.size(0) == rows && coefs.size(1) == q, "kerzoo: coefs must be ", rows,
              " x ", q, " (tensors x seeds), got ", coefs.sizes());
  TORCH_CHECK(coefs.scalar_type() == at::kDouble || coefs.scalar_type() == at::kFloat,
              "kerzoo: coefs must be float64 or float32, got ", coefs.scalar_type());
  TORCH_CHECK(coefs.device().is_cpu(), "kerzoo: coefs must be a CPU tensor (the kernels take it as launch "
              "parameters), got one on ", coefs.device());
  TORCH_CHECK(split >= 0 && split <= q, "kerzoo: split must be in [0, ", q, "], got ", split);
  Merged m;
  std::vector<size_t> column(q);
  for (int64_t j = 0; j < q; ++j) {
    const bool first = j < split;
    size_t i = first ? 0 : m.split;
    while (i < m.seeds.size() && m.seeds[i] != seeds[j]) ++i;
    if (i == m.seeds.size()) m.seeds.push_back(seeds[j]);
    if (first) m.split = m.seeds.size();
    column[j] = i;
  }
  const size_t width = m.seeds.size();
  m.coef.assign((size_t)rows * width, 0.0);
  const at::Tensor c = coefs.to(at::kDouble);
  const auto a = c.accessor<double, 2>();
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t j = 0; j < q; ++j) m.coef[(size_t)t * width + column[j]] += a[t][j];
  return m;
}

}  // namespace kerzoo
