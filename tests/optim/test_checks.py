"""Guards: what the optimizer cannot do right, it refuses (or warns) with the fix."""

import pytest
import torch
import transformers

import kerzoo


def mlp(dtype=torch.float32, dropout=0.0):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 16, dtype=dtype),
        torch.nn.Dropout(dropout),
        torch.nn.Tanh(),
        torch.nn.Linear(16, 1, dtype=dtype),
    )


X = torch.randn(32, 8, generator=torch.Generator().manual_seed(1))


def snapshot(model):
    return [p.detach().clone() for p in model.parameters()]


def unchanged(model, before):
    return all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_low_precision_parameters_without_their_module_are_refused_with_the_fix():
    model = mlp(torch.bfloat16)
    with pytest.raises(ValueError, match=r"fp16/bf16.*kerzoo.optimizer\(name, model\)"):
        kerzoo.optimizer("mezo", model.parameters())
    # asking for in place explicitly accepts the rounding; the module gets exact on-the-fly
    assert kerzoo.optimizer("mezo", model.parameters(), perturb="inplace").mode == "inplace"
    assert kerzoo.optimizer("mezo", model).mode == "onthefly"


def test_meta_parameters_are_refused_before_anything_moves():
    with torch.device("meta"):
        model = mlp()
    with pytest.raises(ValueError, match=r"meta device.*device_map"):
        kerzoo.optimizer("mezo", model)


@pytest.mark.parametrize("perturb", ["inplace", "onthefly"])
def test_forwards_run_in_eval_mode_and_the_training_flags_come_back(perturb):
    """Dropout left on would draw new masks at every point: L+ - L- would measure the masks."""
    seen = []
    model = mlp(torch.float64, dropout=0.5)
    model.register_forward_pre_hook(lambda m, a: seen.append(m.training))
    opt = kerzoo.optimizer("mezo", model, lr=1e-3, eps=1e-6, perturb=perturb, seed=4)
    model.train()
    opt.step(lambda: model(X.double()).pow(2).mean())
    in_train = opt.last_record["coefs"]
    assert model.training and all(m.training for m in model.modules())
    assert seen == [False, False]
    ref = mlp(torch.float64, dropout=0.5).eval()
    ref_opt = kerzoo.optimizer("mezo", ref, lr=1e-3, eps=1e-6, perturb=perturb, seed=4)
    ref_opt.step(lambda: ref(X.double()).pow(2).mean())
    assert in_train == ref_opt.last_record["coefs"]


def test_a_closure_returning_a_model_output_is_refused_with_its_loss_named():
    cfg = transformers.GPT2Config(vocab_size=32, n_embd=16, n_layer=1, n_head=2, n_positions=16)
    model = transformers.GPT2LMHeadModel(cfg)
    ids = torch.randint(0, 32, (2, 8))
    opt = kerzoo.optimizer("mezo", model, perturb="inplace")
    before = snapshot(model)
    with pytest.raises(TypeError, match=r"CausalLMOutput.*return model\(...\).loss"):
        opt.step(lambda: model(input_ids=ids, labels=ids))
    opt.perturber.settle()
    assert opt.steps_done == 0
    with pytest.raises(TypeError, match=r"shape \(2, 8\).*one loss"):
        opt.step(lambda: model(input_ids=ids).logits[..., 0])
    opt.perturber.settle()
    torch.testing.assert_close(snapshot(model), before, rtol=0, atol=1e-6)


def test_a_closure_that_never_runs_the_model_is_refused_on_the_fly():
    model = mlp()
    other = mlp()
    opt = kerzoo.optimizer("mezo", model, perturb="onthefly")
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="perturbed none of the 4 trainable tensors"):
        opt.step(lambda: other(X).pow(2).mean())
    assert unchanged(model, before) and opt.steps_done == 0


def test_coefficients_stuck_at_zero_warn_once_naming_eps():
    model = mlp(torch.bfloat16)
    opt = kerzoo.optimizer("mezo", model, eps=1e-9, lr=1e-3)
    with pytest.warns(RuntimeWarning, match=r"every coefficient was 0 for 5 steps.*eps = 1e-09"):
        for _ in range(5):
            opt.step(lambda: model(X.bfloat16()).float().pow(2).mean())
    assert all(c == 0.0 for c in opt.last_record["coefs"])


def test_nonzero_coefficients_do_not_warn(recwarn):
    model = mlp()
    opt = kerzoo.optimizer("mezo", model, eps=1e-3, lr=1e-3)
    for _ in range(6):
        opt.step(lambda: model(X).pow(2).mean())
    assert not [w for w in recwarn if "coefficient" in str(w.message)]
