"""The optimiser: fused AdamW where it exists, and gradient clipping that still clips with it."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_modules.base import FeedbackModule
from lightning_modules.optim import adamw_with_linear_warmup, use_fused


class TinyRegression(FeedbackModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8))

    def training_step(self, batch, batch_idx):
        return (self.model(batch).float() * 1000).pow(2).mean()  # huge gradients to clip

    def configure_optimizers(self):
        return adamw_with_linear_warmup(self, 1e-3, 0.01, 0.0)


def fake_trainer(scaler=None, clip=None):
    return SimpleNamespace(precision_plugin=SimpleNamespace(scaler=scaler), gradient_clip_val=clip)


def test_fused_adamw_on_cpu_except_under_fp16_clipping():
    params = list(TinyRegression().parameters())
    assert use_fused(params) is True
    assert use_fused(params, fake_trainer(clip=1.0)) is True  # bf16/fp32: nothing scaled
    assert use_fused(params, fake_trainer(scaler=object())) is True  # fp16 without clipping
    assert use_fused(params, fake_trainer(scaler=object(), clip=1.0)) is None
    assert use_fused([p.detach().to(torch.int64) for p in params]) is None


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_clipping_a_fused_optimizer_without_a_scaler_clips(algorithm):
    module = TinyRegression()
    module._trainer = fake_trainer(clip=0.01)
    optimizer = torch.optim.AdamW(module.parameters(), fused=True)
    for p in module.parameters():
        p.grad = torch.full_like(p, 3.0)
    module.configure_gradient_clipping(optimizer, 0.01, algorithm)
    grads = [p.grad for p in module.parameters()]
    if algorithm == "norm":
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        assert total == pytest.approx(0.01, rel=1e-4)
    else:
        assert all(float(g.abs().max()) == pytest.approx(0.01) for g in grads)


def test_bf16_fit_with_clipping_trains_with_the_fused_optimizer(tmp_path):
    module = TinyRegression()
    before = [p.detach().clone() for p in module.parameters()]
    trainer = L.Trainer(
        accelerator="cpu",
        precision="bf16-mixed",
        gradient_clip_val=0.5,
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    clipped_norms = []
    clip = module.configure_gradient_clipping

    def clip_and_record(optimizer, *args, **kwargs):
        clip(optimizer, *args, **kwargs)
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        clipped_norms.append(float(torch.nn.utils.get_total_norm(grads)))

    module.configure_gradient_clipping = clip_and_record
    trainer.fit(module, DataLoader(torch.randn(8, 4), batch_size=4))
    assert trainer.optimizers[0].defaults["fused"] is True
    # Clipping ran on every step and brought the (huge) gradients down to the limit.
    assert len(clipped_norms) == 2
    assert all(norm == pytest.approx(0.5, rel=1e-3) for norm in clipped_norms)
    after = list(module.parameters())
    assert all(not torch.equal(a, b.detach()) for a, b in zip(before, after, strict=True))


class WithTemperature(TinyRegression):
    def __init__(self) -> None:
        super().__init__()
        self.log_temperature = torch.nn.Parameter(torch.tensor(-3.0))
        self.frozen = torch.nn.Parameter(torch.ones(3, 3), requires_grad=False)


def test_only_matrices_decay_whatever_their_names():
    module = WithTemperature()
    module._trainer = SimpleNamespace(
        estimated_stepping_batches=10, precision_plugin=None, gradient_clip_val=None
    )
    optimizer = adamw_with_linear_warmup(module, 1e-3, 0.1, 0.0)["optimizer"]
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    linear, norm = module.model
    assert {id(p) for p in decay["params"]} == {id(linear.weight)}
    assert {id(p) for p in no_decay["params"]} == {
        id(linear.bias),
        id(norm.weight),
        id(norm.bias),
        id(module.log_temperature),
    }
