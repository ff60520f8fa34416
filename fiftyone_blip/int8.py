"""int8 Linear layers whose result for one row never depends on the other rows of the batch.

PyTorch's dynamic quantization (`torch.ao.quantization.quantize_dynamic`) picks one
activation scale for a whole input tensor: an image's result then depends on the
images that share its batch (and a text's on the padding of the longest text).
Here every row (one token of one image or text) gets its own scale, and weights
one scale per output channel:

    y[i] = (round(x[i] / s[i]) @ W_int8) * s[i] * w_scale + bias,   s[i] = max|x[i]| / 127

The int8 product accumulates exactly in int32 (`torch._int_mm`) and the rest is
element-wise, so a row's output is the same bits alone or in any batch.
"""

from __future__ import annotations

import torch

_LEVELS = 127.0  # symmetric int8: -127..127


class RowwiseInt8Linear(torch.nn.Module):
    """A `torch.nn.Linear` as an int8 GEMM: per-row activation scales, per-channel weight scales."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / _LEVELS
        quantized = torch.round(weight / scale[:, None]).clamp(-_LEVELS, _LEVELS).to(torch.int8)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_int8", quantized.t().contiguous())  # (in, out), as `_int_mm` takes it
        self.register_buffer("weight_scale", scale)
        bias = linear.bias.detach().float().clone() if linear.bias is not None else None
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        # A row of zeros gets a tiny scale and quantizes to zeros: its output is the bias.
        scale = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / _LEVELS
        quantized = torch.round(rows / scale).clamp(-_LEVELS, _LEVELS).to(torch.int8)
        out = torch._int_mm(quantized, self.weight_int8).float().mul_(scale).mul_(self.weight_scale)
        if self.bias is not None:
            out.add_(self.bias)
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def quantize_linear_layers(model: torch.nn.Module) -> torch.nn.Module:
    """Replaces every `torch.nn.Linear` of `model` (in place) by a `RowwiseInt8Linear`; returns it."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is torch.nn.Linear:
                setattr(module, name, RowwiseInt8Linear(child))
    return model
