"""The engine: the reference generator, the compiled kernels against it, and the ops' contracts."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import kerzoo.engine as engine
from kerzoo.engine import reference as R
from kerzoo.engine.philox import philox4x32

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
DISTS = ["gaussian", "rademacher"]
seeds = st.integers(0, 2**63 - 1)
offsets = st.integers(0, 2**40)


def words(*xs):
    return tuple(torch.tensor([x], dtype=torch.int64) for x in xs)


@pytest.mark.parametrize(
    "ctr,key,expected",
    [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ],
)
def test_reference_philox_matches_random123_known_answers(ctr, key, expected):
    out = philox4x32(words(*ctr), key)
    assert tuple(int(w) for w in out) == expected


@settings(max_examples=40, deadline=None)
@given(
    seed=seeds,
    key=seeds,
    offset=offsets,
    n=st.integers(1, 300),
    dtype=st.sampled_from(DTYPES),
    dist=st.sampled_from(DISTS),
)
def test_extension_fill_equals_reference(ext, seed, key, offset, n, dtype, dist):
    a = engine.fill_z(torch.empty(n, dtype=dtype), seed, key, offset, dist)
    b = torch.empty(n, dtype=dtype)
    R.fill_z(b, seed, key, offset, R.DIST_CODES[dist])
    if dist == "rademacher":
        assert torch.equal(a, b)
    else:  # the same Philox words; Box-Muller within float32 rounding, then one rounding to dtype
        low = dtype in (torch.float16, torch.bfloat16)
        torch.testing.assert_close(
            a.double(),
            b.double(),
            rtol=float(torch.finfo(dtype).eps) if low else 0,
            atol=4e-6 * max(1.0, float(b.double().abs().max())),
        )


@settings(max_examples=30, deadline=None)
@given(
    seed=seeds,
    offset=offsets,
    n=st.integers(1, 200),
    dtype=st.sampled_from(DTYPES),
    q=st.integers(1, 4),
)
def test_extension_add_multi_equals_reference(ext, seed, offset, n, dtype, q):
    g = torch.Generator().manual_seed(seed % 2**32)
    theta = (torch.randn(n, generator=g) * 0.1).to(dtype)
    coefs = (torch.randn(q, generator=g, dtype=torch.float64) * 1e-2).tolist()
    ss = [(seed + i * 7919) % 2**63 for i in range(q)]
    a, b = theta.clone(), theta.clone()
    engine.add_z_multi(a, coefs, ss, 11, offset)
    R.add_z_multi(b, coefs, ss, 11, offset, 0)
    ulp = torch.finfo(dtype).eps
    torch.testing.assert_close(a.double(), b.double(), rtol=2 * ulp, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(
    seed=seeds,
    rseed=seeds,
    offset=offsets,
    n=st.integers(1, 400),
    dtype=st.sampled_from([torch.bfloat16, torch.float16]),
    q=st.integers(1, 3),
)
def test_extension_stochastic_rounding_equals_reference_bit_for_bit(
    ext, seed, rseed, offset, n, dtype, q
):
    """Rademacher z keeps the float32 sums exact on both backends, so every rounding decision
    (the rounding seed's Philox word of each element) must agree."""
    g = torch.Generator().manual_seed(seed % 2**32)
    theta = (torch.randn(n, generator=g) * 0.1).to(dtype)
    coefs = (torch.randn(q, generator=g, dtype=torch.float64) * 1e-3).tolist()
    ss = [(seed + i * 7919) % 2**63 for i in range(q)]
    a, b = theta.clone(), theta.clone()
    engine.add_z_multi(
        a, coefs, ss, 11, offset, dist="rademacher", rounding="stochastic", rounding_seed=rseed
    )
    R.add_z_multi(b, coefs, ss, 11, offset, R.DIST_CODES["rademacher"], True, rseed)
    assert torch.equal(a.view(torch.int16), b.view(torch.int16))


@settings(max_examples=25, deadline=None)
@given(
    seed=seeds,
    key=seeds,
    a=st.integers(0, 500),
    length=st.integers(1, 300),
    dist=st.sampled_from(DISTS),
)
def test_a_slice_gets_the_slice_of_the_whole(seed, key, a, length, dist):
    whole = engine.fill_z(torch.empty(a + length + 5), seed, key, 0, dist)
    part = engine.fill_z(torch.empty(length), seed, key, a, dist)
    assert torch.equal(part, whole[a : a + length])


def test_same_seed_same_z_and_different_key_different_z():
    a = engine.fill_z(torch.empty(1000), 5, engine.param_key("w"))
    assert torch.equal(a, engine.fill_z(torch.empty(1000), 5, engine.param_key("w")))
    assert not torch.equal(a, engine.fill_z(torch.empty(1000), 5, engine.param_key("b")))
    assert not torch.equal(a, engine.fill_z(torch.empty(1000), 6, engine.param_key("w")))


def test_param_key_is_stable_across_processes():
    assert engine.param_key("model.layers.0.weight") == 1931446192400481819


def test_normals_moments_and_kolmogorov_smirnov_over_a_million_draws():
    from scipy import stats

    z = engine.fill_z(torch.empty(1_000_000, dtype=torch.float64), 123, 456).numpy()
    n = z.size
    assert abs(z.mean()) < 5 / np.sqrt(n)
    assert abs(z.var() - 1) < 5 * np.sqrt(2 / n)
    assert abs(stats.skew(z)) < 5 * np.sqrt(6 / n)
    assert abs(stats.kurtosis(z)) < 5 * np.sqrt(24 / n)
    assert stats.kstest(z, "norm").pvalue > 1e-3


def test_rademacher_is_plus_minus_one_balanced():
    z = engine.fill_z(torch.empty(100_000), 1, 2, dist="rademacher")
    assert set(z.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(z.mean())) < 5 / np.sqrt(z.numel())


def test_add_multi_equals_sequence_of_adds_in_float64():
    theta = torch.randn(10_001, dtype=torch.float64)
    a, b = theta.clone(), theta.clone()
    engine.add_z_multi(a, [0.3, -0.2, 0.1], [1, 2, 3], 9)
    for c, s in zip([0.3, -0.2, 0.1], [1, 2, 3]):
        engine.add_z(b, c, s, 9)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
def test_restore_perturb_is_bit_identical_to_two_adds(dtype):
    theta = (torch.randn(5003) * 0.05).to(dtype)
    a, b = theta.clone(), theta.clone()
    engine.restore_perturb(a, -1e-3, 17, -1e-3, 17, 5)
    engine.add_z(b, -1e-3, 17, 5)
    engine.add_z(b, -1e-3, 17, 5)
    assert torch.equal(a, b)
    engine.restore_perturb(a, 1e-3, 17, 1e-3, 18, 5)
    engine.add_z(b, 1e-3, 17, 5)
    engine.add_z(b, 1e-3, 18, 5)
    assert torch.equal(a, b)


def test_restore_is_exact_in_float32_where_the_binade_does_not_change():
    theta = torch.randn(100_000) * 0.05
    back = theta.clone()
    engine.add_z(back, 1e-3, 3, 4)
    crossed = torch.floor(torch.log2(back.abs())) != torch.floor(torch.log2(theta.abs()))
    engine.add_z(back, -1e-3, 3, 4)
    same_binade = ~crossed
    assert torch.equal(back[same_binade], theta[same_binade])
    assert same_binade.float().mean() > 0.9


def test_add_lowrank_equals_the_dense_formula():
    g = torch.Generator().manual_seed(0)
    m, n, r = 37, 23, 4
    u, s, v = (torch.randn(x, generator=g, dtype=torch.float64) for x in ((m, r), (r, r), (n, r)))
    theta = torch.randn(m, n, generator=g, dtype=torch.float64)
    expected = theta + 0.5 * u @ s @ v.T
    engine.add_lowrank(theta, 0.5, u, s, v)
    torch.testing.assert_close(theta, expected)
    with pytest.raises(ValueError, match="U"):
        engine.add_lowrank(theta, 0.5, u[:, :2], s, v)


def test_stochastic_rounding_is_unbiased_in_mean():
    theta = torch.full((200_000,), 1.0, dtype=torch.bfloat16)
    engine.add_z_multi(theta, [1e-4], [4], 3, rounding="stochastic", rounding_seed=9)
    z = engine.fill_z(torch.empty(200_000, dtype=torch.float64), 4, 3)
    exact = 1.0 + 1e-4 * z
    err = theta.double() - exact
    assert abs(float(err.mean())) < 5 * float(err.std()) / np.sqrt(err.numel())
    nearest = torch.full((200_000,), 1.0, dtype=torch.bfloat16)
    engine.add_z_multi(nearest, [1e-4], [4], 3)
    assert torch.equal(nearest, torch.ones_like(nearest))  # each update is below half an ulp: lost


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="dist 'uniform'"):
        engine.fill_z(torch.empty(3), 1, 2, dist="uniform")
    with pytest.raises(ValueError, match="contiguous"):
        engine.add_z(torch.empty(4, 4).t(), 1.0, 1, 2)
    with pytest.raises(ValueError, match="seed"):
        engine.add_z(torch.empty(4), 1.0, -1, 2)


def test_info_reports_a_backend_and_reason_per_op():
    rows = engine.info()
    assert {r["op"] for r in rows} == {
        "fill_z",
        "add_z_multi",
        "restore_perturb",
        "add_lowrank",
        "fill_z_foreach",
        "add_z_table",
    }
    assert all(r["cpu"] in ("c++", "reference") for r in rows)
    assert any("cuda" in line for line in engine.info_lines())


def test_disabled_extension_falls_back_with_a_reason(monkeypatch):
    import subprocess
    import sys

    code = (
        "import warnings, torch, kerzoo.engine as e; warnings.simplefilter('error');\n"
        "t=torch.zeros(8); e.fill_z(t,1,2); print(e.info()[0]['why'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "KERZOO_DISABLE_EXT": "1"},
    )
    assert out.returncode == 0, out.stderr
    assert "KERZOO_DISABLE_EXT" in out.stdout


@settings(max_examples=15, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 300), min_size=1, max_size=6),
    seed=seeds,
    dtypes=st.lists(st.sampled_from(DTYPES), min_size=6, max_size=6),
    q=st.integers(1, 3),
)
def test_foreach_ops_equal_the_single_tensor_ops_tensor_by_tensor(sizes, seed, dtypes, q):
    g = torch.Generator().manual_seed(seed % 2**32)
    thetas = [(torch.randn(n, generator=g) * 0.05).to(dt) for n, dt in zip(sizes, dtypes)]
    keys = [engine.param_key(f"t{i}") for i in range(len(thetas))]
    offsets = [i * 5 for i in range(len(thetas))]
    seed %= 2**62
    coefs, ss = [1e-3 * (i + 1) for i in range(q)], [seed + i for i in range(q)]
    a, b = [t.clone() for t in thetas], [t.clone() for t in thetas]
    engine.add_z_multi_foreach(a, coefs, ss, keys, offsets)
    engine.restore_perturb_foreach(a, -1e-3, seed, 2e-3, seed + 1, keys, offsets)
    for t, k, o in zip(b, keys, offsets):
        engine.add_z_multi(t, coefs, ss, k, o)
        engine.restore_perturb(t, -1e-3, seed, 2e-3, seed + 1, k, o)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    outs = [torch.empty_like(t) for t in thetas]
    engine.fill_z_foreach(outs, seed, keys, offsets)
    assert all(
        torch.equal(x, engine.fill_z(torch.empty_like(x), seed, k, o))
        for x, k, o in zip(outs, keys, offsets)
    )


def test_foreach_refuses_mismatched_lists():
    with pytest.raises(ValueError, match="2 thetas but 1 keys"):
        engine.add_z_foreach([torch.zeros(3), torch.zeros(3)], 1.0, 1, [5])


def _run_with_broken_compiler(tmp_path, code, **env):
    import os
    import subprocess
    import sys

    base = {
        k: v for k, v in os.environ.items() if k not in ("KERZOO_DISABLE_EXT", "KERZOO_REQUIRE_EXT")
    }
    env = {**base, "KERZOO_EXT_DIR": str(tmp_path), "CXX": "false", "CC": "false", **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


def test_a_failed_build_falls_back_to_the_reference_with_one_warning(tmp_path):
    code = (
        "import warnings, torch, kerzoo.engine as e\nwith warnings.catch_warnings(record=True) as "
        "w:\n    warnings.simplefilter('always'); e.fill_z(torch.zeros(8), 1, 2); "
        "e.add_z(torch.zeros(8), 1., 1, 2)\nprint(len([x for x in w if 'reference' in "
        "str(x.message)]), e.info()[0]['cpu'])"
    )
    out = _run_with_broken_compiler(tmp_path, code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "reference"]


def test_a_failed_build_is_an_error_when_the_extension_is_required(tmp_path):
    out = _run_with_broken_compiler(
        tmp_path,
        "import torch, kerzoo.engine as e; e.fill_z(torch.zeros(8), 1, 2)",
        KERZOO_REQUIRE_EXT="1",
    )
    assert out.returncode != 0 and "KERZOO_REQUIRE_EXT" in out.stderr


@pytest.mark.parametrize("dist", DISTS)
def test_blocks_across_the_32_bit_counter_boundary_equal_the_reference(ext, dist):
    offset = 4 * (2**32 - 37) + 1  # the block counter's low word wraps inside this tensor
    a = engine.fill_z(torch.empty(400), 7, 8, offset, dist)
    b = torch.empty(400)
    R.fill_z(b, 7, 8, offset, R.DIST_CODES[dist])
    torch.testing.assert_close(
        a, b, rtol=0, atol=0 if dist == "rademacher" else 4e-6 * float(b.abs().max())
    )


def _table_case(seed, sizes, dtypes, q):
    g = torch.Generator().manual_seed(seed % 2**32)
    thetas = [(torch.randn(n, generator=g) * 0.05).to(dt) for n, dt in zip(sizes, dtypes)]
    keys = [engine.param_key(f"t{i}") for i in range(len(thetas))]
    offsets = [i * 5 for i in range(len(thetas))]
    table = torch.randn(len(thetas), q, generator=g, dtype=torch.float64) * 1e-3
    table[0] = 0.0  # a row of zeros leaves its tensor as it is
    return thetas, keys, offsets, table


@settings(max_examples=20, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 300), min_size=2, max_size=6),
    seed=seeds,
    dtypes=st.lists(st.sampled_from(DTYPES), min_size=6, max_size=6),
    q=st.integers(1, 4),
    stochastic=st.booleans(),
)
def test_a_table_pass_equals_add_z_multi_row_by_row_bit_for_bit(sizes, seed, dtypes, q, stochastic):
    """Each tensor its own coefficients, repeated seeds merged as add_z_multi merges them, one
    rounding (stochastic in bf16/fp16 where asked): the same bits as one add_z_multi per tensor."""
    thetas, keys, offsets, table = _table_case(seed, sizes, dtypes, q)
    seed %= 2**62
    ss = [seed + i % 2 for i in range(q)]  # q > 2 repeats a seed
    rounding = "stochastic" if stochastic else "nearest"
    a, b = [t.clone() for t in thetas], [t.clone() for t in thetas]
    engine.add_z_table(a, table, ss, keys, offsets, rounding=rounding, rounding_seed=seed)
    for t, row, k, o in zip(b, table.tolist(), keys, offsets):
        engine.add_z_multi(t, row, ss, k, o, rounding=rounding, rounding_seed=seed)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    a, b = [t.clone() for t in thetas], [t.clone() for t in thetas]  # the reference, the same
    R.add_z_table(a, table, ss, keys, offsets, 0, 0, stochastic, seed)
    for t, row, k, o in zip(b, table.tolist(), keys, offsets):
        R.add_z_multi(t, *R.phases(row, ss, 0)[1], k, o, 0, stochastic, seed)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert torch.equal(a[0], thetas[0])


@settings(max_examples=20, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 300), min_size=2, max_size=6),
    seed=seeds,
    dtypes=st.lists(st.sampled_from(DTYPES), min_size=6, max_size=6),
    same=st.booleans(),
)
def test_a_split_table_pass_equals_restore_perturb_row_by_row_bit_for_bit(
    sizes, seed, dtypes, same
):
    """split=1 of a 2-column table: restore, round, perturb, round, as restore_perturb does."""
    thetas, keys, offsets, table = _table_case(seed, sizes, dtypes, 2)
    seed %= 2**62
    ss = [seed, seed if same else seed + 1]
    for coefs in (table, table.float(), table[1:2].expand(len(thetas), 2)):
        a, b = [t.clone() for t in thetas], [t.clone() for t in thetas]
        engine.add_z_table(a, coefs, ss, keys, offsets, split=1)
        for t, (cr, cn), k, o in zip(b, coefs.double().tolist(), keys, offsets):
            if cr or cn:
                engine.restore_perturb(t, cr, ss[0], cn, ss[1], k, o)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
        a, b = [t.clone() for t in thetas], [t.clone() for t in thetas]
        R.add_z_table(a, coefs, ss, keys, offsets, 0, 1)
        for t, (cr, cn), k, o in zip(b, coefs.double().tolist(), keys, offsets):
            R.restore_perturb(t, cr, ss[0], cn, ss[1], k, o, 0)
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_a_bad_table_is_refused_by_name():
    ts, keys = [torch.zeros(3), torch.zeros(4)], [1, 2]
    with pytest.raises(ValueError, match=r"coefs must be 2 x 1 .* got shape \(1, 1\)"):
        engine.add_z_table(ts, torch.zeros(1, 1), [5], keys)
    with pytest.raises(ValueError, match=r"float64 or float32 CPU tensor, got torch\.float16"):
        engine.add_z_table(ts, torch.zeros(2, 1, dtype=torch.float16), [5], keys)
    with pytest.raises(ValueError, match=r"split must be an int in \[0, 1\], got 2"):
        engine.add_z_table(ts, torch.zeros(2, 1), [5], keys, split=2)
    with pytest.raises(ValueError, match="seed"):
        engine.add_z_table(ts, torch.zeros(2, 1), [-5], keys)
