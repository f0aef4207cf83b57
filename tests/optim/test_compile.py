"""Training a compiled model: torch.compile(model) before or after the optimizer, model.compile().

On the fly (bf16): the weights stay bit-identical at lr = 0, L+ and L- equal eager's to bf16's
rounding, and no graph is compiled after the first steps. In place (fp32): the weights end
bit-identical to an eager run's (the moves do not depend on the losses at lr = 0).
"""

import pytest
import torch
import torch._dynamo
import torch._dynamo.utils
from tiny_llama import llama

import kerzoo

pytestmark = pytest.mark.slow

IDS = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(1))
STEPS = 6


def graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def run(dtype, perturb, how, preset="mezo", **options):
    """Losses per step, final weights, graphs after 3 steps and after all."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = llama(dtype)
    forward, given = model, model
    if how == "before":  # compiled and run before the optimizer adds its hooks
        forward = given = torch.compile(model)
        forward(input_ids=IDS)
    elif how == "method":
        model.compile()
    opt = kerzoo.optimizer(preset, given, lr=0.0, eps=1e-3, perturb=perturb, seed=3, **options)
    if how == "after":
        forward = torch.compile(model)
    losses, warm = [], None
    for i in range(STEPS):
        opt.step(lambda: forward(input_ids=IDS, labels=IDS).loss)
        losses.append(opt.last_record["losses"])
        if i == 2:
            warm = graphs()
    return losses, [p.detach().clone() for p in model.parameters()], warm, graphs()


@pytest.fixture(scope="module")
def eager_bf16():
    return run(torch.bfloat16, "onthefly", "eager")


@pytest.mark.parametrize("how", ["after", "before", "method"])
def test_on_the_fly_on_a_compiled_bf16_model_matches_eager(how, eager_bf16):
    losses, weights, warm, final = run(torch.bfloat16, "onthefly", how)
    start = [p.detach() for p in llama(torch.bfloat16).parameters()]
    assert all(torch.equal(a, b) for a, b in zip(start, weights))  # exact restore at lr = 0
    assert warm > 0 and final == warm  # compiled, and no recompile after warm-up
    torch.testing.assert_close(losses, eager_bf16[0], rtol=2**-8, atol=0)  # bf16's rounding


def test_in_place_on_a_compiled_fp32_model_matches_eager():
    e_losses, e_weights, _, _ = run(torch.float32, "inplace", "eager")
    losses, weights, warm, final = run(torch.float32, "inplace", "after")
    assert all(torch.equal(a, b) for a, b in zip(e_weights, weights))
    assert warm > 0 and final == warm
    torch.testing.assert_close(losses, e_losses, rtol=1e-5, atol=0)


def test_output_perturbation_on_a_compiled_bf16_model_matches_eager():
    e_losses, _, _, _ = run(torch.bfloat16, "outputs", "eager", "subzero", rank=2)
    losses, weights, warm, final = run(torch.bfloat16, "outputs", "after", "subzero", rank=2)
    start = [p.detach() for p in llama(torch.bfloat16).parameters()]
    assert all(torch.equal(a, b) for a, b in zip(start, weights))
    assert warm > 0 and final == warm
    torch.testing.assert_close(losses, e_losses, rtol=2**-8, atol=0)
