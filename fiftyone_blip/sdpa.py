"""Scaled-dot-product attention (SDPA) for BLIP's vision and text layers.

transformers implements BLIP attention eagerly only (materialised score and
probability matrices; `attn_implementation="sdpa"` raises). `use_sdpa(model)`
swaps the forward of each attention module of one model instance for one that
calls `torch.nn.functional.scaled_dot_product_attention`, which runs fused
kernels on GPUs and avoids the probability matrix on CPUs. Weights, cache
handling and outputs are unchanged; attention weights are no longer returned,
so heatmaps (which read them) use `use_eager` or a model loaded without SDPA.
"""

from __future__ import annotations

import types


def _vision_forward(self, hidden_states, **kwargs):
    import torch.nn.functional as F

    bsz, tgt_len, embed_dim = hidden_states.size()
    qkv = self.qkv(hidden_states).reshape(bsz, tgt_len, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    context = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=self.scale)
    context = context.permute(0, 2, 1, 3).reshape(bsz, tgt_len, embed_dim)
    return self.projection(context), None


def _text_forward(
    self,
    hidden_states,
    attention_mask=None,
    encoder_hidden_states=None,
    encoder_attention_mask=None,
    cache=None,
    **kwargs,
):
    import torch.nn.functional as F
    from transformers.cache_utils import EncoderDecoderCache

    input_shape = hidden_states.shape[:-1]
    query = self.query(hidden_states).view(*input_shape, -1, self.attention_head_size).transpose(1, 2)
    is_cross = encoder_hidden_states is not None
    mask = encoder_attention_mask if is_cross else attention_mask

    # The same cache protocol as transformers' BlipTextSelfAttention.
    is_updated = False
    current_cache = cache
    if cache is not None and isinstance(cache, EncoderDecoderCache):
        is_updated = cache.is_updated.get(self.layer_idx)
        current_cache = cache.cross_attention_cache if is_cross else cache.self_attention_cache
    states = encoder_hidden_states if is_cross else hidden_states
    if is_cross and cache is not None and is_updated:
        key = current_cache.layers[self.layer_idx].keys
        value = current_cache.layers[self.layer_idx].values
    else:
        shape = (*states.shape[:-1], -1, self.attention_head_size)
        key = self.key(states).view(shape).transpose(1, 2)
        value = self.value(states).view(shape).transpose(1, 2)
        if cache is not None:
            key, value = current_cache.update(key, value, self.layer_idx, kwargs=kwargs)
            if is_cross and isinstance(cache, EncoderDecoderCache):
                cache.is_updated[self.layer_idx] = True

    if mask is not None:
        mask = mask.to(dtype=query.dtype, device=query.device)
    context = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    context = context.permute(0, 2, 1, 3).reshape(*input_shape, self.all_head_size)
    return context, None


def use_sdpa(model) -> int:
    """Switches every BLIP attention module of `model` to SDPA; returns how many."""
    from transformers.models.blip.modeling_blip import BlipAttention
    from transformers.models.blip.modeling_blip_text import BlipTextSelfAttention

    count = 0
    for module in model.modules():
        if isinstance(module, BlipAttention):
            module.forward = types.MethodType(_vision_forward, module)
            count += 1
        elif isinstance(module, BlipTextSelfAttention):
            module.forward = types.MethodType(_text_forward, module)
            count += 1
    return count


def use_eager(model) -> None:
    """Restores transformers' own attention on every module of `model`."""
    for module in model.modules():
        if "forward" in vars(module) and getattr(module.forward, "__func__", None) in (_vision_forward, _text_forward):
            del module.forward
