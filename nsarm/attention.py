"""Attention kernels behind one dispatcher, plus the masks the Infinity transformer needs.

Letters: B batch, H heads, L query tokens, S key tokens, c head dim, N packed text tokens over the batch.

`attend(q, k, v, mask, scale)` runs PyTorch SDPA by default (CPU and GPU). The explicit "math" backend is the
reference the others are tested against. "flash" uses the flash-attn package (CUDA, fp16/bf16) where it applies —
unmasked calls such as KV-cache sampling steps — and SDPA elsewhere (block-causal masks, key-padding masks, CPU).
"flex" runs the block-causal self-attention of teacher forcing (training) with FlexAttention and a block mask, as the
official trainer's `use_flex_attn`: SDPA with a dense mask falls back to the memory-efficient kernel, FlexAttention
skips the fully masked tiles. It applies on CUDA (compiled) and to CPU forwards without gradients (eager: the CPU
kernel has no backward); everything else stays on SDPA. A backend is picked once per process with `set_backend()` or
the NSARM_ATTENTION environment variable; `self_attention_mask()` returns the mask the chosen backend wants.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F

BACKENDS = ("sdpa", "math", "flash", "flex")
_state = {"backend": os.environ.get("NSARM_ATTENTION", "sdpa")}


def set_backend(name: str) -> None:
    """Select the attention kernel for this process: one of BACKENDS."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {BACKENDS}")
    _state["backend"] = name


def get_backend() -> str:
    return _state["backend"]


def flash_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def _flash(q_BHLc, k_BHSc, v_BHSc, scale):
    from flash_attn import flash_attn_func  # layout (B, L, H, c)

    out = flash_attn_func(q_BHLc.transpose(1, 2), k_BHSc.transpose(1, 2), v_BHSc.transpose(1, 2), softmax_scale=scale)
    return out.transpose(1, 2)


@functools.cache
def _compiled_flex():
    """flex_attention compiled once per process (its eager form materialises the scores: debugging only)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _flex(q_BHLc, k_BHSc, v_BHSc, block_mask, scale):
    from torch.nn.attention.flex_attention import flex_attention

    if torch.compiler.is_compiling():  # inside a compiled block: dynamo captures the kernel with the block's graph
        return flex_attention(q_BHLc, k_BHSc, v_BHSc, block_mask=block_mask, scale=scale)
    if q_BHLc.is_cuda:
        return _compiled_flex()(q_BHLc, k_BHSc, v_BHSc, block_mask=block_mask, scale=scale)
    with warnings.catch_warnings():  # the eager CPU form warns that it is for debugging; it is exact, only slower
        warnings.simplefilter("ignore", UserWarning)
        return flex_attention(q_BHLc, k_BHSc, v_BHSc, block_mask=block_mask, scale=scale)


def attend(
    q_BHLc: torch.Tensor,
    k_BHSc: torch.Tensor,
    v_BHSc: torch.Tensor,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention. Returns (B, H, L, c).

    Args:
        q_BHLc, k_BHSc, v_BHSc: queries, keys, values. q and k may be fp32 while v is bf16 (cosine attention keeps
            the normalised q/k in fp32): everything is cast to v's dtype first, as the reference does for its kernels.
        mask: boolean, True = may attend; broadcastable to (B, H, L, S). None = full attention. A FlexAttention
            BlockMask (from `self_attention_mask` under the "flex" backend) runs FlexAttention whatever `backend` is.
        scale: softmax scale; None = 1/sqrt(c). Cosine attention passes 1.
        backend: override the process-wide backend for this call.
    """
    backend = backend or _state["backend"]
    q_BHLc, k_BHSc = q_BHLc.to(v_BHSc.dtype), k_BHSc.to(v_BHSc.dtype)
    if scale is None:
        scale = 1.0 / math.sqrt(q_BHLc.shape[-1])
    if mask is not None and not isinstance(mask, torch.Tensor):  # a BlockMask
        return _flex(q_BHLc, k_BHSc, v_BHSc, mask, scale)
    if backend == "flash" and mask is None and q_BHLc.is_cuda and v_BHSc.dtype in (torch.float16, torch.bfloat16):
        return _flash(q_BHLc, k_BHSc, v_BHSc, scale)
    if backend in ("sdpa", "flash", "flex"):
        return F.scaled_dot_product_attention(q_BHLc, k_BHSc, v_BHSc, attn_mask=mask, scale=scale)
    if backend == "math":
        att_BHLS = (q_BHLc @ k_BHSc.transpose(-1, -2)).float() * scale
        if mask is not None:
            att_BHLS = att_BHLS.masked_fill(~mask, float("-inf"))
        return (att_BHLS.softmax(dim=-1).to(v_BHSc.dtype)) @ v_BHSc
    raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")


def scale_index(scale_lengths: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
    """(L,) long: the scale each token belongs to, for tokens laid out scale after scale."""
    return torch.cat([torch.full((n,), i, dtype=torch.long, device=device) for i, n in enumerate(scale_lengths)])


def block_causal_mask(scale_lengths: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
    """(L, L) bool, True = visible: a token of scale i sees every token of scales <= i (bidirectional inside a scale).

    This is the next-scale-prediction mask of VAR/Infinity (spec §1.3): the SOS token is scale 0, the tokens
    predicting scale i+1 are fed at position block i+1 and see the whole coarser pyramid.
    """
    idx_L = scale_index(scale_lengths, device)
    return idx_L[:, None] >= idx_L[None, :]


@functools.lru_cache(maxsize=16)
def flex_block_causal_mask(scale_lengths: tuple[int, ...], device: str):
    """FlexAttention BlockMask of `block_causal_mask` (built once per schedule and device: it costs a few ms)."""
    from torch.nn.attention.flex_attention import create_block_mask

    idx_L = scale_index(scale_lengths, device)

    def visible(b, h, q_idx, kv_idx):
        return idx_L[q_idx] >= idx_L[kv_idx]

    L = len(idx_L)
    return create_block_mask(visible, None, None, L, L, device=device)


def flex_applies(device: torch.device, needs_grad: bool) -> bool:
    """Whether the "flex" backend runs here: any CUDA call; on CPU only without gradients (no CPU backward kernel)."""
    return device.type == "cuda" or not needs_grad


def self_attention_mask(scale_lengths: Sequence[int], device: torch.device, needs_grad: bool):
    """The block-causal mask of teacher forcing in the form the process's backend wants: a BlockMask under "flex"
    where FlexAttention applies, else the (L, L) bool mask for SDPA/math (the fallback)."""
    if _state["backend"] == "flex" and flex_applies(torch.device(device), needs_grad):
        return flex_block_causal_mask(tuple(int(n) for n in scale_lengths), str(device))
    return block_causal_mask(scale_lengths, device)


def pad_packed(kv_NC: torch.Tensor, lens_B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpack variable-length rows (sum(lens), C) into a padded (B, S, C) batch and a (B, 1, 1, S) key mask.

    The reference uses flash-attn varlen kernels on the packed form; padding + a key mask is the same math and runs
    under SDPA everywhere. S = max(lens).
    """
    lens = [int(n) for n in lens_B.tolist()]
    if any(n <= 0 for n in lens):
        raise ValueError(f"every text must have at least one token, got lengths {lens}")
    if sum(lens) != kv_NC.shape[0]:
        raise ValueError(f"packed text has {kv_NC.shape[0]} rows but the lengths sum to {sum(lens)}")
    S = max(lens)
    out_BSC = kv_NC.new_zeros(len(lens), S, kv_NC.shape[-1])
    keep_BS = torch.zeros(len(lens), S, dtype=torch.bool, device=kv_NC.device)
    start = 0
    for b, n in enumerate(lens):
        out_BSC[b, :n] = kv_NC[start : start + n]
        keep_BS[b, :n] = True
        start += n
    return out_BSC, keep_BS[:, None, None, :]
