"""A two-tensor problem with a known gradient, and the mean update of an optimizer over seeds:
the unbiasedness checks of several test modules share them."""

import math

import torch

D = (1.0, 2.0, 3.0)


class TwoTensors(torch.nn.Module):
    """f = 1/2 a^T diag(1,2,3) a + ||b||^2 + sum a - sum b, gradient known."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.tensor([[0.1, 0.4], [-0.3, 0.2]], dtype=torch.float64))

    def forward(self):
        d = torch.tensor(D, dtype=torch.float64)
        return 0.5 * (self.a * d * self.a).sum() + (self.b**2).sum() + self.a.sum() - self.b.sum()

    def grad(self) -> torch.Tensor:
        """The gradient of both tensors, flattened and concatenated."""
        d = torch.tensor(D, dtype=torch.float64)
        return torch.cat([(d * self.a.detach() + 1), (2 * self.b.detach() - 1).reshape(-1)])


def mean_step_over_seeds(model: TwoTensors, make_optimizer, lr: float, n: int):
    """(mean, standard error) over seeds 0..n-1 of -(theta_1 - theta_0) / lr, one step from the same
    start each time; ``make_optimizer(seed)`` builds the optimizer. The last one is returned too."""
    start = [p.detach().clone() for p in model.parameters()]
    est = []
    for s in range(n):
        with torch.no_grad():
            for p, v in zip(model.parameters(), start):
                p.copy_(v)
        opt = make_optimizer(s)
        opt.step(model)
        opt.close()
        est.append(
            torch.cat(
                [((v - p.detach()) / lr).reshape(-1) for p, v in zip(model.parameters(), start)]
            )
        )
    with torch.no_grad():
        for p, v in zip(model.parameters(), start):
            p.copy_(v)
    est = torch.stack(est)
    return est.mean(0), est.std(0) / math.sqrt(n), opt
