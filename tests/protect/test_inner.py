"""The inner loops' float32 adapters attach to the attention projections of every host's UNet."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from shared_core.protect.inner import LoRAWeights


class HostLinear(torch.nn.Module):
    """A linear layer as Forge builds them: a plain Module with `weight`, `in_features`, `out_features`."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = torch.nn.Parameter(torch.randn(out_features, in_features))
        self.bias = None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class Attention(torch.nn.Module):
    def __init__(self, linear=torch.nn.Linear, width: int = 8):
        super().__init__()
        self.to_q, self.to_k, self.to_v = linear(width, width), linear(width, width), linear(width, width)
        self.to_out = torch.nn.Sequential(linear(width, width), torch.nn.Dropout(0.0))
        self.other = linear(width, width)

    def forward(self, x):
        attention = torch.softmax(self.to_q(x) @ self.to_k(x).transpose(-1, -2), dim=-1)
        return self.other(self.to_out(attention @ self.to_v(x)))


def test_adapters_attach_to_host_linear_layers_and_change_the_output():
    for linear in (torch.nn.Linear, HostLinear):
        model, x = Attention(linear), torch.randn(2, 5, 8)
        weights = LoRAWeights(model, rank=2, seed=0)
        assert sorted(weights.adapters) == ["to_k", "to_out.0", "to_q", "to_v"], linear
        before = model(x)
        with weights.active():
            assert torch.equal(model(x), before)  # zero-initialised up-projections: the host's model at first
            loss = model(x).square().mean()
        loss.backward()
        torch.optim.SGD(weights.parameters(), lr=1.0).step()
        with weights.active():
            assert not torch.allclose(model(x), before), linear
        assert torch.equal(model(x), before)  # detached again: the host's module is unchanged
