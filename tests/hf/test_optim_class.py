"""kerzoo.optim_class: a kerzoo optimizer where code expects a torch optimizer class."""

from __future__ import annotations

import pytest
import torch

import kerzoo
from kerzoo.optim import ZOOptimizer


def test_class_builds_what_kerzoo_optimizer_builds():
    """cls(params, lr=...) with the torch signature: the same steps as kerzoo.optimizer with the
    same options (class defaults, then the keywords at construction)."""
    cls = kerzoo.optim_class("kerzoo", eps=1e-2)
    assert issubclass(cls, torch.optim.Optimizer) and issubclass(cls, ZOOptimizer)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    out = []
    for build in (
        lambda m: cls(m.parameters(), lr=1e-2, seed=3),
        lambda m: kerzoo.optimizer("kerzoo", m.parameters(), lr=1e-2, eps=1e-2, seed=3),
    ):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 2)
        opt = build(model)
        losses = [opt.step(lambda: model(x).pow(2).mean()) for _ in range(3)]
        out.append((losses, model.weight.clone()))
    assert out[0][0] == out[1][0]
    assert torch.equal(out[0][1], out[1][1])
    assert cls(torch.nn.Linear(4, 2).parameters(), lr=0.5).eps == 1e-2


def test_step_without_closure_says_where_to_go_and_bad_options_fail_early():
    opt = kerzoo.optim_class("mezo")(torch.nn.Linear(2, 1).parameters(), lr=1e-3)
    with pytest.raises(ValueError, match=r"kerzoo\.hf\.ZOTrainer"):
        opt.step()
    with pytest.raises(TypeError, match="unknown optimizer option"):
        kerzoo.optim_class("mezo", learning_rate=1e-3)


def test_kerzoo_does_not_import_transformers():
    """kerzoo, optim_class and the accelerate helper work without transformers installed."""
    import subprocess
    import sys

    code = (
        "import sys, kerzoo, kerzoo.integrations; kerzoo.optim_class('mezo'); "
        "assert 'transformers' not in sys.modules and 'accelerate' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
