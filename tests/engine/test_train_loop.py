"""Mixed-precision training step on CPU (bfloat16 autocast, no loss scaling)."""

import pytest
import torch
from torch import nn

from hapnet_d2.engine import AutocastTrainer, resolve_amp_dtype


class ToyRegressor(nn.Module):
    """Returns a loss dict like a Detectron2 model; records the dtype its layer computed in."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 1)
        self.compute_dtype = None

    def forward(self, batch):
        x, y = batch
        prediction = self.linear(x)
        self.compute_dtype = prediction.dtype
        return {"loss_mse": ((prediction.float() - y) ** 2).mean()}


def _batches(seed=0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(8, 1, generator=g)
    while True:
        x = torch.randn(16, 8, generator=g)
        yield x, x @ weight


def test_resolve_amp_dtype():
    assert resolve_amp_dtype("auto", "cpu") == torch.bfloat16
    assert resolve_amp_dtype("auto", "cuda") == torch.float16
    assert resolve_amp_dtype("float16", "cpu") == torch.float16
    with pytest.raises(ValueError, match="SOLVER.AMP.DTYPE"):
        resolve_amp_dtype("fp8", "cpu")


def test_bfloat16_autocast_on_cpu_trains():
    torch.manual_seed(0)
    model = ToyRegressor()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    trainer = AutocastTrainer(
        model, _batches(), optimizer, precision=torch.bfloat16, device_type="cpu"
    )
    trainer.train(0, 40)
    losses = [value for value, _ in trainer.storage.history("total_loss").values()]
    assert len(losses) == 40
    assert model.compute_dtype == torch.bfloat16
    assert not trainer.grad_scaler.is_enabled()
    assert sum(losses[-5:]) < 0.1 * sum(losses[:5])
    assert trainer.state_dict()["grad_scaler"] == {}


def test_float16_uses_a_grad_scaler():
    trainer = AutocastTrainer(
        ToyRegressor(), _batches(), torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1),
        precision=torch.float16, device_type="cpu",
    )  # fmt: skip
    assert trainer.grad_scaler.is_enabled()
