"""The ops as torch sees them: schemas, fake kernels (torch.library.opcheck) and torch.compile."""

import pytest
import torch

import kerzoo.engine as engine
from kerzoo.engine.ops import OPS


def _samples():
    """Arguments for each op (CPU): a float32 and a bf16 case, lists of mixed dtypes."""
    g = torch.Generator().manual_seed(0)

    def t(n, dtype=torch.float32):
        return (torch.randn(n, generator=g) * 0.1).to(dtype)

    table = torch.tensor([[1e-3, -2e-3], [0.0, 0.0], [3e-3, 1e-3]], dtype=torch.float64)
    return {
        "fill_z": [(t(37), 3, 5, 7, 0), (t(8, torch.bfloat16), 3, 5, 0, 1)],
        "add_z_multi": [
            (t(37), [1e-3, -2e-3], [3, 4], 5, 7, 0, False, 0),
            (t(40, torch.bfloat16), [1e-2], [3], 5, 0, 0, True, 9),
        ],
        "restore_perturb": [(t(37), -1e-3, 3, 1e-3, 3, 5, 7, 0)],
        "add_lowrank": [(t(12).view(3, 4), 0.5, t(6).view(3, 2), t(4).view(2, 2), t(8).view(4, 2))],
        "fill_z_foreach": [([t(5), t(9, torch.float64)], 3, [1, 2], [0, 4], 0)],
        "add_z_table": [
            (
                [t(5), t(9, torch.bfloat16), t(3)],
                table,
                [3, 4],
                [1, 2, 3],
                [0, 4, 0],
                0,
                1,
                False,
                0,
            ),
            (
                [t(5), t(9, torch.bfloat16), t(3)],
                table.float(),
                [3, 3],
                [1, 2, 3],
                [0, 4, 0],
                0,
                0,
                True,
                11,
            ),
        ],
    }


def test_every_op_has_samples():
    assert set(_samples()) == set(OPS)


@pytest.mark.parametrize("op", OPS)
def test_opcheck_every_op(op):
    """Schema (what it mutates), fake kernel against the real one, and AOT dispatch."""
    engine.build()
    for args in _samples()[op]:
        torch.library.opcheck(getattr(torch.ops.kerzoo, op).default, args)


@pytest.mark.parametrize(
    "op,args,match",
    [
        ("fill_z", (torch.zeros(3, dtype=torch.int32), 1, 2, 0, 0), "float32, float64"),
        ("fill_z", (torch.zeros(4, 4).t(), 1, 2, 0, 0), "contiguous"),
        ("add_z_multi", (torch.zeros(3), [1.0], [1, 2], 5, 0, 0, False, 0), "1 coefs but 2 seeds"),
        (
            "add_lowrank",
            (torch.zeros(3, 4), 1.0, torch.zeros(3, 2), torch.zeros(2, 2), torch.zeros(5, 2)),
            r"needs U \(3, 2\)",
        ),
        ("fill_z_foreach", ([torch.zeros(3)], 1, [1, 2], [0], 0), "1 outs but 2 keys"),
        (
            "add_z_table",
            ([torch.zeros(3)], torch.zeros(2, 1), [1], [1], [0], 0, 0, False, 0),
            r"1 x 1",
        ),
        (
            "add_z_table",
            ([torch.zeros(3)], torch.zeros(1, 1, dtype=torch.int64), [1], [1], [0], 0, 0, False, 0),
            "float64 or float32",
        ),
        (
            "add_z_table",
            ([torch.zeros(3)], torch.zeros(1, 1), [1], [1], [0], 0, 3, False, 0),
            r"split must be in \[0, 1\]",
        ),
    ],
)
def test_the_fake_kernels_refuse_bad_shapes_and_dtypes(op, args, match):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fake = [
            [mode.from_tensor(x) for x in a]
            if isinstance(a, list) and a and isinstance(a[0], torch.Tensor)
            else mode.from_tensor(a)
            if isinstance(a, torch.Tensor)
            else a
            for a in args
        ]
        with pytest.raises(RuntimeError, match=match):
            getattr(torch.ops.kerzoo, op)(*fake)


def _every_op(ts, table):
    """Each op once, on the tensors of ts (mutated in place)."""
    a, b, c, w, u, s, v = ts
    torch.ops.kerzoo.fill_z(a, 3, 5, 7, 0)
    torch.ops.kerzoo.add_z_multi(b, [1e-3, -2e-3], [3, 4], 5, 7, 0, False, 0)
    torch.ops.kerzoo.restore_perturb(c, -1e-3, 3, 1e-3, 4, 6, 0, 0)
    torch.ops.kerzoo.add_lowrank(w, 0.5, u, s, v)
    torch.ops.kerzoo.fill_z_foreach([a], 9, [5], [0], 1)
    torch.ops.kerzoo.add_z_table([b, c], table, [3, 4], [5, 6], [7, 0], 0, 1, False, 0)
    return a.sum() + b.sum() + c.sum() + w.sum()


def test_every_op_inside_a_compiled_function_equals_eager():
    """fullgraph: the ops are opaque nodes of one graph (mutations functionalized), no break."""
    engine.build()
    g = torch.Generator().manual_seed(1)
    shapes = [(33,), (40,), (17,), (4, 3), (4, 2), (2, 2), (3, 2)]
    start = [torch.randn(*n, generator=g) for n in shapes]
    table = torch.tensor([[1e-3, 2e-3], [-1e-3, 5e-4]], dtype=torch.float64)
    eager = [t.clone() for t in start]
    out_eager = _every_op(eager, table)
    torch._dynamo.reset()
    compiled = [t.clone() for t in start]
    out_compiled = torch.compile(_every_op, fullgraph=True, backend="aot_eager")(compiled, table)
    assert all(torch.equal(x, y) for x, y in zip(eager, compiled))
    assert torch.equal(out_eager, out_compiled)
    assert not all(torch.equal(x, y) for x, y in zip(start, compiled))
