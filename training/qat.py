"""Quantisation-aware fine-tuning for onnxruntime's dynamic int8 (the served numerics).

onnxruntime's dynamic quantisation computes each MatMul's input range per call (uint8,
asymmetric, one scale for the whole tensor) and stores weights as int8 per output channel.
Near-tie predictions flip when that noise is added after training. Here every encoder
Linear sees the same noise during a short extra fine-tune (straight-through estimator),
and the quantised weights are baked in at the end, so the exported graph re-quantises them
exactly and only the per-call activation rounding remains.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import parametrize


def fake_quant_activation(x: torch.Tensor) -> torch.Tensor:
    """uint8 asymmetric, per tensor, range including zero (as DynamicQuantizeLinear)."""
    lo = torch.clamp(x.detach().min(), max=0.0)
    hi = torch.clamp(x.detach().max(), min=0.0)
    scale = torch.clamp((hi - lo) / 255.0, min=1e-8)
    zero = torch.round(-lo / scale)
    q = torch.clamp(torch.round(x / scale) + zero, 0, 255)
    return x + ((q - zero) * scale - x).detach()


class PerChannelInt8(nn.Module):
    """Weight parametrisation: symmetric int8 per output channel, straight-through."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        scale = torch.clamp(weight.detach().abs().amax(dim=1, keepdim=True) / 127.0, min=1e-8)
        q = torch.clamp(torch.round(weight / scale), -127, 127) * scale
        return weight + (q - weight).detach()


def _encoder_linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


@contextmanager
def fake_quantised(encoder: nn.Module) -> Iterator[None]:
    """Inside: every encoder Linear computes with int8-rounded input and weights."""
    linears = _encoder_linears(encoder)
    handles = []
    for linear in linears:
        parametrize.register_parametrization(linear, "weight", PerChannelInt8())
        handles.append(
            linear.register_forward_pre_hook(
                lambda _m, args: (fake_quant_activation(args[0]), *args[1:])
            )
        )
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for linear in linears:
            # Keep the rounded weights: the exported graph then re-quantises them exactly.
            parametrize.remove_parametrizations(linear, "weight", leave_parametrized=True)
