import pytest
import torch

import kerzoo
from kerzoo.registry import UnknownNameError


class TinyNet(torch.nn.Module):
    def __init__(self, dtype=torch.float32):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = torch.nn.Linear(8, 16, dtype=dtype)
        self.norm = torch.nn.LayerNorm(16, dtype=dtype)
        self.fc2 = torch.nn.Linear(16, 1, dtype=dtype)

    def forward(self, x):
        return self.fc2(torch.tanh(self.norm(self.fc1(x))))


def data(dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=g, dtype=dtype)
    y = torch.sin(x[:, :1]) + 0.5 * x[:, 1:2]
    return x, y


def test_kerzoo_preset_fine_tunes_a_small_torch_model():
    model = TinyNet()
    x, y = data()
    closure = lambda: torch.nn.functional.mse_loss(model(x), y)
    opt = kerzoo.optimizer("kerzoo", model, lr=3e-3, eps=1e-3, seed=0)
    start = float(closure())
    for _ in range(400):
        opt.step(closure)
    assert float(closure()) < 0.6 * start


def test_param_groups_and_torch_lr_scheduler():
    model = TinyNet()
    x, y = data()
    opt = kerzoo.optimizer(
        "mezo",
        [
            {"params": model.fc1.parameters(), "lr": 1e-2},
            {"params": model.fc2.parameters(), "lr": 0.0},
        ],
        eps=1e-3,
    )
    fc2_before = model.fc2.weight.detach().clone()
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for _ in range(4):
        opt.step(lambda: torch.nn.functional.mse_loss(model(x), y))
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.25)
    # lr 0 group: perturbed and restored in place, so unchanged up to the rounding of W + eps z
    torch.testing.assert_close(model.fc2.weight, fc2_before, rtol=0, atol=1e-6)
    assert opt.last_record["lr"] == [pytest.approx(1e-2 * 0.5), 0.0]


def test_gradient_accumulation_equals_the_mean_loss_batch():
    """A list of closures is one step over their mean loss: the same as one closure of the mean."""
    x, y = data(torch.float64)
    runs = []
    for split in (True, False):
        model = TinyNet(torch.float64)
        opt = kerzoo.optimizer("mezo", model, lr=1e-2, seed=3)
        loss = lambda a, b: torch.nn.functional.mse_loss(model(x[a:b]), y[a:b])
        for _ in range(3):
            if split:
                opt.step([lambda: loss(0, 32), lambda: loss(32, 64)])
            else:
                opt.step(lambda: (loss(0, 32) + loss(32, 64)) / 2)
        runs.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_on_the_fly_never_writes_low_precision_weights(dtype):
    model = TinyNet(dtype)
    x, y = data(dtype)
    before = [p.detach().clone() for p in model.parameters()]
    opt = kerzoo.optimizer("mezo", model, lr=0.0, eps=1e-2)
    assert opt.mode == "onthefly"
    losses = {float(opt.step(lambda: torch.nn.functional.mse_loss(model(x), y))) for _ in range(30)}
    assert len(losses) > 1  # the perturbations did reach the forward
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_on_the_fly_and_in_place_see_the_same_losses_in_float64():
    x, y = data(torch.float64)
    records = []
    for mode in ("onthefly", "inplace"):
        model = TinyNet(torch.float64)
        opt = kerzoo.optimizer("kerzoo", model, lr=1e-3, perturb=mode, seed=5)
        for _ in range(3):
            opt.step(lambda: torch.nn.functional.mse_loss(model(x), y))
        records.append(opt.last_record["losses"])
    assert records[0] == pytest.approx(records[1], rel=1e-12)


def test_weight_decay_skips_biases_and_norms():
    model = TinyNet(torch.float64)
    bias, norm_w = model.fc1.bias.detach().clone(), model.norm.weight.detach().clone()
    w = model.fc1.weight.detach().clone()
    opt = kerzoo.optimizer("mezo", model, lr=0.1, weight_decay=0.5, eps=1e-3, perturb="onthefly")
    x = torch.randn(4, model.fc1.in_features, dtype=torch.float64)
    # the forward runs (every tensor is perturbed), the loss is a constant: g = 0, only decay acts
    opt.step(lambda: model(x).sum() * 0.0 + 1.0)
    assert opt.last_record["coefs"] == [0.0]
    assert torch.equal(model.fc1.bias, bias) and torch.equal(model.norm.weight, norm_w)
    torch.testing.assert_close(model.fc1.weight, w * 0.95, rtol=0, atol=1e-12)


def test_unknown_preset_and_misspelt_options_are_named():
    with pytest.raises(UnknownNameError, match="mezo"):
        kerzoo.optimizer("mez0", [torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(TypeError, match="'directons' \\(did you mean 'directions'\\?\\)"):
        kerzoo.optimizer("kerzoo", [torch.nn.Parameter(torch.zeros(2))], directons=4)
    with pytest.raises(UnknownNameError, match="legendre3"):
        kerzoo.optimizer("kerzoo", [torch.nn.Parameter(torch.zeros(2))], kernel="legendre4")


def test_composition_by_names_equals_the_preset():
    x, y = data(torch.float64)
    out = []
    for spec in (
        "kerzoo",
        {
            "estimator": "kernel",
            "kernel": "legendre3",
            "projection": "dense",
            "update": "sgd",
            "directions": 3,
            "lr": 1e-6,
        },
    ):
        model = TinyNet(torch.float64)
        opt = kerzoo.optimizer(spec, model, lr=1e-3, seed=2)
        for _ in range(3):
            opt.step(lambda: torch.nn.functional.mse_loss(model(x), y))
        out.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*out))


def test_presets_are_listed_with_their_parts(capsys):
    from kerzoo.cli import main

    main(["list", "optimizers"])
    out = capsys.readouterr().out
    for name in ("mezo", "zo-sgd", "zo-sgd-sign", "zo-sgd-mmt", "zo-sgd-cons", "zo-adam", "kerzoo"):
        assert name in out
    assert "estimator=kernel" in out and "kernel=legendre3" in out


def test_step_without_closure_is_an_error():
    opt = kerzoo.optimizer("mezo", [torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError, match="closure"):
        opt.step()


def test_spec_from_toml_and_yaml_files(tmp_path):
    (tmp_path / "opt.toml").write_text(
        '[optimizer]\nestimator = "kernel"\nkernel = "legendre5"\nlr = 1e-3\n'
    )
    (tmp_path / "opt.yaml").write_text("preset: zo-adam\nlr: 0.01\n")
    p = [torch.nn.Parameter(torch.zeros(3))]
    a = kerzoo.optimizer(str(tmp_path / "opt.toml"), p)
    assert (
        a.estimator.name == "kernel"
        and a.estimator.kernel.name == "legendre5"
        and a.param_groups[0]["lr"] == 1e-3
    )
    b = kerzoo.optimizer(str(tmp_path / "opt.yaml"), p)
    assert b.update_rule.name == "adam" and b.param_groups[0]["lr"] == 0.01
    (tmp_path / "bad.toml").write_text('[optimizer]\nestimator = "kernel"\nkernal = "legendre5"\n')
    with pytest.raises(TypeError, match="'kernal' \\(did you mean 'kernel'\\?\\)"):
        kerzoo.optimizer(str(tmp_path / "bad.toml"), p)


def test_per_tensor_clipping_bounds_each_tensors_step():
    x, y = data(torch.float64)
    model = TinyNet(torch.float64)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lr, clip = 0.5, 0.01
    opt = kerzoo.optimizer("kerzoo", model, lr=lr, clip=clip, perturb="onthefly", seed=4)
    opt.step(lambda: torch.nn.functional.mse_loss(model(x), y))
    moved = {n: float((p.detach() - before[n]).norm()) for n, p in model.named_parameters()}
    assert all(m <= lr * clip * (1 + 1e-9) for m in moved.values()), moved
    assert max(moved.values()) == pytest.approx(
        lr * clip, rel=1e-6
    )  # large estimates are clipped to the bound
    with pytest.raises(ValueError, match="clip"):
        kerzoo.optimizer("mezo", model, clip=-1.0)


@pytest.mark.parametrize(
    "check", ["resume_same_trajectory", "replay_rebuilds_weights", "unchanged_on_nan"]
)
def test_clipping_passes_conformance(check):
    import kerzoo.testing as kt

    getattr(kt, f"check_{check}")("kerzoo", clip=0.05)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", kerzoo.list_optimizers())
@pytest.mark.parametrize("mode", ["inplace", "onthefly"])
def test_every_optimizer_steps_on_the_gpu_as_on_the_cpu(name, mode):
    """The CUDA kernels and the CPU path draw the same z to within float32 rounding (the generator's
    arithmetic is float32 in every dtype), so a few steps of any named optimizer agree to that: the
    losses it saw, and how far it moved each parameter to 1e-5 of the largest move. A z drawn at the
    wrong offset or seed would differ by the whole move."""
    x, y = data(torch.float64)
    runs = []
    for device in ("cpu", "cuda"):
        model = TinyNet(torch.float64).to(device)
        xd, yd = x.to(device), y.to(device)
        opt = kerzoo.optimizer(name, model, lr=1e-3, perturb=mode, seed=5)
        losses = []
        for _ in range(4):
            opt.step(lambda: torch.nn.functional.mse_loss(model(xd), yd))
            losses.extend(opt.last_record["losses"])
        opt.close()
        runs.append((losses, [p.detach().cpu() for p in model.parameters()]))
    (l_cpu, p_cpu), (l_gpu, p_gpu) = runs
    assert l_gpu == pytest.approx(l_cpu, rel=1e-6)
    start = [p.detach() for p in TinyNet(torch.float64).parameters()]
    moved = max(float((b - a).abs().max()) for a, b in zip(start, p_cpu))
    assert moved > 1e-5, f"the steps barely moved the parameters ({moved})"
    for a, b in zip(p_gpu, p_cpu):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * moved)


@pytest.mark.parametrize("name", ["mezo", "kerzoo", "hizoo", "subzero", "lozo", "pgap"])
@pytest.mark.parametrize(
    "mode,dtype",
    [("inplace", torch.float32), ("inplace", torch.bfloat16), ("onthefly", torch.bfloat16)],
)
def test_passes_over_many_tensors_equal_one_call_per_tensor_bit_for_bit(name, mode, dtype):
    """The optimizer moves all tensors whose coefficients agree in one projection call (add_many,
    move_many: one engine call for the dense projection). Against the per-tensor loop of the base
    class, with two parameter groups (two sets of coefficients), weight decay, several directions
    and, in bf16, stochastic rounding: the same bits."""
    from kerzoo.projections.base import Projection

    x, y = data(dtype)
    results = []
    for batched in (True, False):
        model = TinyNet(dtype)
        groups = [
            {"params": [model.fc1.weight, model.fc1.bias, model.norm.weight]},
            {"params": [model.norm.bias, model.fc2.weight, model.fc2.bias], "lr": 3e-3},
        ]
        opt = kerzoo.optimizer(
            name, groups, lr=1e-2, eps=3e-2, weight_decay=0.1, perturb=mode, module=model, seed=3
        )
        if not batched:
            opt.projection.add_many = Projection.add_many.__get__(opt.projection)
            opt.projection.move_many = Projection.move_many.__get__(opt.projection)
        for _ in range(3):
            opt.step(lambda: torch.nn.functional.mse_loss(model(x), y))
        results.append([p.detach().clone() for p in model.parameters()])
    start = list(TinyNet(dtype).parameters())
    assert any(not torch.equal(a, b) for a, b in zip(results[0], start)), "the steps moved nothing"
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "name,options",
    [
        ("kerzoo", {"r_scope": "tensor"}),
        ("kerzoo", {}),
        ("mezo", {}),
        ("lezo", {"fraction": 0.5}),
        ("sparse-mezo", {}),
        ("subzero", {}),
    ],
)
@pytest.mark.parametrize(
    "mode,dtype",
    [("inplace", torch.float32), ("inplace", torch.bfloat16), ("onthefly", torch.bfloat16)],
)
def test_one_table_call_per_pass_equals_one_call_per_tensor_bit_for_bit(name, options, mode, dtype):
    """Every pass is one projection call with a coefficient row per tensor (add_table: one
    add_z_table engine call for the dense projection), also where every tensor has its own
    factors (kerzoo, r_scope="tensor"). Against the base class's add_table, add_many and
    move_many, which end in one add (or move) per tensor: the same bits, with two parameter
    groups, weight decay and, in bf16, stochastic rounding."""
    from kerzoo.projections.base import Projection

    if name == "sparse-mezo" and mode == "inplace":
        pytest.skip("sparse-mezo reads the weights: it perturbs on the fly only")
    x, y = data(dtype)
    results, calls = [], []
    for batched in (True, False):
        model = TinyNet(dtype)
        groups = [
            {"params": [model.fc1.weight, model.fc1.bias, model.norm.weight]},
            {"params": [model.norm.bias, model.fc2.weight, model.fc2.bias], "lr": 3e-3},
        ]
        opt = kerzoo.optimizer(
            name,
            groups,
            lr=1e-2,
            eps=3e-2,
            weight_decay=0.1,
            perturb=mode,
            module=model,
            seed=3,
            **options,
        )
        if not batched:
            for method in ("add_table", "add_many", "move_many"):
                setattr(opt.projection, method, getattr(Projection, method).__get__(opt.projection))
        else:
            table = opt.projection.add_table
            opt.projection.add_table = lambda *a, **k: (calls.append(a[1]), table(*a, **k))
        for _ in range(3):
            opt.step(lambda: torch.nn.functional.mse_loss(model(x), y))
        results.append([p.detach().clone() for p in model.parameters()])
    start = list(TinyNet(dtype).parameters())
    assert any(not torch.equal(a, b) for a, b in zip(results[0], start)), "the steps moved nothing"
    for a, b in zip(*results):
        assert torch.equal(a, b)
    if options.get("r_scope") == "tensor":  # the passes did hold a row per tensor
        assert max(len(rows) for rows in calls) > 2
