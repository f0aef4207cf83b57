"""The CUDA backend: compiled sources, and the kernels against the reference on a GPU."""

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import kerzoo.engine as engine
from kerzoo.engine import reference as R
from kerzoo.engine.build import CUDA_DIR

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_cuda_kernels_compile_with_nvcc(tmp_path):
    out = subprocess.run(
        [
            "nvcc",
            "-c",
            "-std=c++17",
            "-arch=sm_90",
            "-O3",
            str(CUDA_DIR / "kernels.cu"),
            "-o",
            str(tmp_path / "kernels.o"),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "kernels.o").stat().st_size > 0


def _cuda_include():
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    for root in (
        Path(nvcc).resolve().parents[1],
        Path("/usr/local/cuda"),
        *sorted(Path("/usr/local").glob("cuda-*")),
    ):
        if (root / "include" / "cuda_runtime.h").exists():
            return root / "include"
    return None


@pytest.mark.skipif(
    _cuda_include() is None or shutil.which("g++") is None, reason="no CUDA headers or g++"
)
def test_cuda_torch_glue_compiles_against_torch_headers(tmp_path):
    """ops_cuda.cpp (the torch side of the CUDA backend) checked by the C++ compiler, also where
    torch is a CPU build: its one generated CUDA header is stubbed."""
    from torch.utils.cpp_extension import include_paths

    stub = tmp_path / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n")
    cmd = [
        "g++",
        "-std=c++17",
        "-fsyntax-only",
        *(f"-I{p}" for p in include_paths()),
        f"-I{_cuda_include()}",
        f"-I{tmp_path}",
        str(CUDA_DIR / "ops_cuda.cpp"),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dist", ["gaussian", "rademacher"])
@pytest.mark.parametrize("n,offset", [(1, 0), (1001, 7), (1 << 20, 4), (4097, 2**40 + 3)])
def test_cuda_fill_and_add_equal_cpu_reference(cuda_ext, dtype, dist, n, offset):
    a = engine.fill_z(torch.empty(n, dtype=dtype, device="cuda"), 99, 1234, offset, dist).cpu()
    b = torch.empty(n, dtype=dtype)
    R.fill_z(b, 99, 1234, offset, R.DIST_CODES[dist])
    tol = 4e-6 * max(1.0, float(b.double().abs().max()))
    torch.testing.assert_close(
        a.double(),
        b.double(),
        rtol=0,
        atol=tol if dtype in (torch.float32, torch.float64) else float(torch.finfo(dtype).eps) * 8,
    )
    theta = (torch.randn(n) * 0.1).to(dtype)
    g, h = theta.cuda(), theta.clone()
    engine.add_z_multi(g, [1e-2, -3e-3, 5e-3], [1, 2, 3], 77, offset, dist)
    R.add_z_multi(h, [1e-2, -3e-3, 5e-3], [1, 2, 3], 77, offset, R.DIST_CODES[dist])
    torch.testing.assert_close(
        g.cpu().double(), h.double(), rtol=2 * float(torch.finfo(dtype).eps), atol=1e-6
    )


@gpu
def test_cuda_rademacher_bits_equal_cpu_exactly(cuda_ext):
    a = engine.fill_z(torch.empty(123457, device="cuda"), 5, 6, 11, "rademacher").cpu()
    b = engine.fill_z(torch.empty(123457), 5, 6, 11, "rademacher")
    assert torch.equal(a, b)


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_restore_perturb_identical_to_two_adds(cuda_ext, dtype):
    theta = (torch.randn(100003, device="cuda") * 0.05).to(dtype)
    a, b = theta.clone(), theta.clone()
    engine.restore_perturb(a, -1e-3, 8, -1e-3, 8, 3)
    engine.add_z(b, -1e-3, 8, 3)
    engine.add_z(b, -1e-3, 8, 3)
    assert torch.equal(a, b)


@gpu
def test_cuda_stochastic_rounding_is_unbiased(cuda_ext):
    theta = torch.ones(1 << 20, dtype=torch.bfloat16, device="cuda")
    engine.add_z_multi(theta, [1e-4], [4], 3, rounding="stochastic", rounding_seed=9)
    z = engine.fill_z(torch.empty(1 << 20, dtype=torch.float64, device="cuda"), 4, 3)
    err = theta.double() - (1 + 1e-4 * z)
    assert abs(float(err.mean())) < 5 * float(err.std()) / (1 << 10)


@gpu
def test_cuda_more_directions_than_one_launch_holds(cuda_ext):
    theta = torch.zeros(1000, dtype=torch.float64, device="cuda")
    ref = torch.zeros(1000, dtype=torch.float64)
    coefs, seeds = [0.01 * (i + 1) for i in range(40)], list(range(40))
    engine.add_z_multi(theta, coefs, seeds, 5)
    R.add_z_multi(ref, coefs, seeds, 5, 0, 0)
    torch.testing.assert_close(theta.cpu(), ref, rtol=0, atol=1e-5)


@gpu
def test_cuda_foreach_over_more_tensors_than_one_launch_equals_the_reference(cuda_ext):
    g = torch.Generator().manual_seed(0)
    sizes = [int(x) for x in torch.randint(0, 5000, (120,), generator=g)] + [1 << 20, 3]
    thetas = [(torch.randn(n, generator=g) * 0.05).to(DTYPES[i % 4]) for i, n in enumerate(sizes)]
    keys = [1000 + i for i in range(len(thetas))]
    offsets = [(i * 7) % 13 for i in range(len(thetas))]
    gpu_ts = [t.cuda() for t in thetas]
    engine.add_z_multi_foreach(gpu_ts, [1e-3, -2e-3], [5, 6], keys, offsets)
    engine.restore_perturb_foreach(gpu_ts, -1e-3, 5, 1e-3, 7, keys, offsets)
    for t, gt, k, o in zip(thetas, gpu_ts, keys, offsets):
        R.add_z_multi(t, [1e-3, -2e-3], [5, 6], k, o, 0)
        R.restore_perturb(t, -1e-3, 5, 1e-3, 7, k, o, 0)
        eps = float(torch.finfo(t.dtype).eps)
        torch.testing.assert_close(gt.cpu().double(), t.double(), rtol=4 * eps, atol=1e-6)
    outs = [torch.empty(n, device="cuda") for n in sizes]
    engine.fill_z_foreach(outs, 3, keys, offsets, "rademacher")
    for out, k, o in zip(outs, keys, offsets):
        assert torch.equal(
            out.cpu(), engine.fill_z(torch.empty(out.numel()), 3, k, o, "rademacher")
        )


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,r", [(1, 1, 1), (37, 1001, 3), (2048, 513, 8), (5, 70000, 16)])
def test_cuda_add_lowrank_equals_the_reference(cuda_ext, dtype, m, n, r):
    """One kernel, no m x n temporary, accumulated in float32 (float64 for a float64 theta) and
    rounded once: equal to the reference's row-block addmm to the rounding of that sum."""
    assert (
        engine.info()[[row["op"] for row in engine.info()].index("add_lowrank")]["cuda"] == "cuda"
    )
    g = torch.Generator().manual_seed(m * n + r)
    theta = (torch.randn(m, n, generator=g) * 0.05).to(dtype)
    u, s, v = (
        torch.randn(m, r, generator=g),
        torch.randn(r, r, generator=g),
        torch.randn(n, r, generator=g),
    )
    ref = theta.clone()
    R.add_lowrank(ref, 1e-3, u, s, v)
    got = theta.cuda()
    engine.add_lowrank(got, 1e-3, u.cuda(), s.cuda(), v.cuda())
    ct_eps = float(torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps)
    bound = float(theta.double().abs().max()) + 1e-3 * r * float(
        (u @ s).abs().max() * v.abs().max()
    )
    atol = (
        4 * ct_eps * bound
        if dtype in (torch.float32, torch.float64)
        else float(torch.finfo(dtype).eps) * bound
    )
    torch.testing.assert_close(got.cpu().double(), ref.double(), rtol=0, atol=atol)
    assert not torch.equal(ref, theta), "the update changed nothing"


@gpu
@pytest.mark.parametrize("q,split", [(2, 1), (3, 0), (20, 7), (20, 0)])
def test_cuda_table_pass_over_more_tensors_than_one_launch_equals_the_reference(cuda_ext, q, split):
    """add_z_table: a row per tensor (zero rows skipped), 120 tensors of four dtypes (several
    launches), the directions of a move in one launch or, past 16, in several."""
    g = torch.Generator().manual_seed(q * 10 + split)
    sizes = [int(x) for x in torch.randint(0, 3000, (120,), generator=g)]
    thetas = [(torch.randn(n, generator=g) * 0.05).to(DTYPES[i % 4]) for i, n in enumerate(sizes)]
    keys = [2000 + i for i in range(len(thetas))]
    offsets = [(i * 5) % 11 for i in range(len(thetas))]
    table = torch.randn(len(thetas), q, generator=g, dtype=torch.float64) * 1e-3
    table[::7] = 0.0
    seeds = [40 + i % 17 for i in range(q)]  # q = 20: repeats (merged), more than 16 remain
    gpu_ts = [t.cuda() for t in thetas]
    engine.add_z_table(gpu_ts, table, seeds, keys, offsets, split=split)
    R.add_z_table(thetas, table, seeds, keys, offsets, 0, split)
    for t, gt in zip(thetas, gpu_ts):
        eps = float(torch.finfo(t.dtype).eps)
        torch.testing.assert_close(gt.cpu().double(), t.double(), rtol=4 * eps, atol=1e-6)


@gpu
def test_cuda_table_pass_equals_restore_perturb_per_tensor_bit_for_bit(cuda_ext):
    g = torch.Generator().manual_seed(3)
    thetas = [(torch.randn(n, generator=g) * 0.05).to(DTYPES[n % 4]).cuda() for n in range(1, 60)]
    keys, offsets = list(range(len(thetas))), [0] * len(thetas)
    table = torch.randn(len(thetas), 2, generator=g, dtype=torch.float64) * 1e-3
    a, b = [t.clone() for t in thetas], [t.clone() for t in thetas]
    engine.add_z_table(a, table, [8, 8], keys, offsets, split=1)
    for t, (cr, cn), k in zip(b, table.tolist(), keys):
        engine.restore_perturb(t, cr, 8, cn, 8, k)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
