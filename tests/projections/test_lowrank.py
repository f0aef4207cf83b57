import pytest
import torch
from hypothesis import given, settings, strategies as st

from kerzoo import engine
from kerzoo.plugins import get
from kerzoo.projections import ParamInfo
from kerzoo.projections.lowrank import orthonormal


def info(shape, name="w"):
    return ParamInfo(name, engine.param_key(name), torch.zeros(shape), 0)


def make(kind, params, **options):
    proj = get("projections", kind)(**options)
    proj.setup(params, base_seed=3)
    proj.begin_step(0)
    return proj


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 60), r=st.integers(1, 12), seed=st.integers(0, 2**62))
def test_seeded_bases_have_orthonormal_columns(rows, r, seed):
    r = min(r, rows)
    q = orthonormal(rows, r, seed, 5).double()
    torch.testing.assert_close(q.T @ q, torch.eye(r, dtype=torch.float64), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind,options", [("subspace", {"rank": 4}), ("lowrank", {"rank": 2})])
def test_second_moment_of_z_equals_a_dense_gaussians(kind, options):
    """E[Z (.) Z] = 1 per element, as for dense z: the scale sqrt(mn)/r (or 1/sqrt(r)) is right."""
    p = info((24, 16))
    proj = make(kind, [p], **options, **{proj_period(kind): 1})
    samples = []
    for s in range(400):  # a new basis for every sample: the expectation is over bases too
        proj.begin_step(s)
        samples.append(proj.materialize(p, [1.0], [s]))
    samples = torch.stack(samples).double()
    second = (samples**2).mean()
    assert abs(float(second) - 1.0) < 0.05, float(second)
    assert torch.linalg.matrix_rank(samples[0], rtol=1e-5) <= options["rank"]


def proj_period(kind):
    return {"subspace": "refresh", "lowrank": "nu"}[kind]


def test_one_dimensional_tensors_stay_dense():
    b = info((10,), "bias")
    proj = make("subspace", [b])
    dense = engine.fill_z(torch.empty(10), 9, b.key)
    torch.testing.assert_close(proj.materialize(b, [1.0], [9]), dense)


def test_memory_held_is_m_plus_n_times_r_per_matrix():
    params = [info((30, 20), "a"), info((8, 50), "b"), info((7,), "c")]
    sub = make("subspace", params, rank=4)
    assert sub.memory_bytes() == 4 * ((30 + 20) * 4 + (8 + 50) * 4)
    lo = make("lowrank", params, rank=2)
    assert lo.memory_bytes() == 4 * (20 * 2 + 50 * 2)


def test_bases_are_redrawn_every_period_and_only_then():
    p = info((12, 9))
    proj = make("subspace", [p], rank=3, refresh=10)
    u0 = proj.bases[id(p)][0].clone()
    proj.begin_step(9)
    assert torch.equal(proj.bases[id(p)][0], u0)
    proj.begin_step(10)
    assert not torch.equal(proj.bases[id(p)][0], u0)


def test_directions_combine_linearly():
    p = info((12, 9))
    proj = make("lowrank", [p], rank=2)
    both = proj.materialize(p, [0.5, -2.0], [1, 2])
    apart = 0.5 * proj.materialize(p, [1.0], [1]) - 2.0 * proj.materialize(p, [1.0], [2])
    torch.testing.assert_close(both, apart, rtol=1e-5, atol=1e-5)
