"""The Infinity bitwise next-scale transformer (spec §1), with the official module tree and state-dict keys.

Letters: B batch, L tokens over all scales (scale 0 = the SOS token), l tokens of one scale, C width, H heads,
c = C/H head dim, d = d_vae bits per token, N packed text tokens over the batch, T = text width (T5: 2048).

`forward` is teacher forcing: per-scale bit logits for the whole pyramid at once under the block-causal mask.
`condition` + `forward_scale` are the same computation one scale at a time with a `KVCache`; inference.py owns
the sampling loop. Module names reproduce the release (`block_chunks.{c}.module.{j}`, persistent `zero_k_bias`
buffers) so `state_dict()` equals `infinity_2b_reg.pth` / the Infinity-8B shards key for key.

Checked against the FoundationVision/Infinity reference code run outside this repository (2-block, 128-wide config,
shared weights, fp32, fused-norm path as released, its bf16 cast of the text attention disabled): teacher-forced
logits and the per-scale KV-cache logits agree to 1.7e-6 over the 7 scales of the 0.06M schedule.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from nsarm.attention import attend, pad_packed, self_attention_mask
from nsarm.rope import apply_rope, rope_angles, rope_positions

Schedule = list[tuple[int, int]]


@dataclass(frozen=True)
class TransformerConfig:
    """Architecture of the Infinity transformer; defaults = Infinity-2B as released (load_infinity args)."""

    depth: int = 32  # number of CrossAttnBlocks
    embed_dim: int = 2048  # C
    num_heads: int = 16  # H; head dim 128 in every release
    mlp_ratio: float = 4.0  # FF = round(C * mlp_ratio / 256) * 256
    d_vae: int = 32  # bits per transformer token (32 for d32, 56 for d14 + 2x2 patchify)
    text_channels: int = 2048  # T5 width (flan-t5-xl)
    text_maxlen: int = 512  # rows of cfg_uncond
    block_chunks: int = 8  # module tree block_chunks.{c}.module.{j}; must divide depth
    norm_eps: float = 1e-6  # all LayerNorms / the text RMSNorm
    num_levels: int = 15  # rows of lvl_embed
    rope_base: float = 10000.0
    cond_drop_rate: float = 0.1  # classifier-free-guidance caption drop (applied by the training step)
    drop_path_rate: float = 0.1  # stochastic depth, linear over blocks, training only

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def ffn_dim(self) -> int:
        return round(self.embed_dim * self.mlp_ratio / 256) * 256

    @property
    def pool_heads(self) -> int:
        # TextAttentivePool: T5 width split into heads of 128 (64 beyond C=4096); at least 1 for tiny encoders
        return max(1, self.text_channels // (128 if self.embed_dim <= 4096 else 64))

    def validate(self) -> TransformerConfig:
        if self.embed_dim % self.num_heads or self.head_dim % 4:
            raise ValueError(f"embed_dim {self.embed_dim} must split into {self.num_heads} heads of a multiple of 4")
        if self.depth % self.block_chunks:
            raise ValueError(f"block_chunks {self.block_chunks} must divide depth {self.depth}")
        if self.embed_dim % self.pool_heads:
            raise ValueError(f"embed_dim {self.embed_dim} must be divisible by {self.pool_heads} pool heads")
        return self


TRANSFORMER_PRESETS = {
    # CPU tests/demo: 2 blocks in 2 chunks keep the official key structure; 32-bit tokens = d8 VAE + 2x2 patchify
    "tiny": TransformerConfig(depth=2, embed_dim=64, num_heads=4, d_vae=32, text_channels=64, block_chunks=2),
    "infinity-2b": TransformerConfig(),
    "infinity-8b": TransformerConfig(depth=40, embed_dim=3584, num_heads=28, d_vae=56),
}


@functools.lru_cache(maxsize=32)
def _rope_table(schedule, full_hw, head_dim: int, base: float, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin (L, head_dim/2) of a whole schedule, cached: every scale step of a sampling loop reuses it."""
    cos, sin = rope_angles(head_dim, rope_positions(schedule, full_hw), base)
    return cos.to(device), sin.to(device)


class PackedText(NamedTuple):
    """Variable-length text features: rows of every caption concatenated (spec §1.2 kv_compact)."""

    features_NT: torch.Tensor  # (sum(lens), T) raw T5 features (before text_norm)
    lens_B: torch.Tensor  # (B,) long, tokens per caption (>= 1)


class Condition(NamedTuple):
    """Per-batch conditioning computed once from the text and reused by every scale."""

    cond_BC: torch.Tensor  # pooled text: SOS content and AdaLN condition (fp32)
    gss_B16C: torch.Tensor  # shared AdaLN output, added to every block's ada_gss
    ca_kv_BSC: torch.Tensor  # padded projected text for cross-attention
    ca_keep: torch.Tensor  # (B, 1, 1, S) bool key mask


class KVCache:
    """Self-attention keys/values of the scales already run, one (k, v) pair per block: (B, H, L_so_far, c)."""

    def __init__(self, depth: int):
        self.k: list[torch.Tensor | None] = [None] * depth
        self.v: list[torch.Tensor | None] = [None] * depth
        self.tokens = 0  # tokens cached so far (RoPE offset of the next scale)

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k[layer] is not None:
            k, v = torch.cat([self.k[layer], k], dim=2), torch.cat([self.v[layer], v], dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v


class FastRMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * weight, in fp32 (the reference's text_norm)."""

    def __init__(self, C: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight).to(x.dtype)


class DropPath(nn.Module):
    """Stochastic depth on the residual branch (per sample), active only in training.

    The keep probability is a 0-dim CPU tensor attribute, not a Python float: torch.compile guards on a float's value,
    so the linearly rising rates of the blocks forced one recompile per block (seen on an H100: only 8 of 32 blocks
    compiled before dynamo's recompile limit). Not a buffer: the state dict keeps the release's keys, and a model
    built on the meta device (8B) must not hold an unmaterialised tensor. A 0-dim CPU tensor mixes with CUDA ones.
    """

    def __init__(self, p: float):
        super().__init__()
        self.active = p > 0
        self.keep = torch.tensor(1.0 - p, device="cpu")

    def extra_repr(self) -> str:
        return f"p={1 - float(self.keep):g}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.active:
            return x
        keep = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device) < self.keep
        return x * keep / self.keep


class SelfAttention(nn.Module):
    """Cosine self-attention with learnable per-head scale (clamped at ln 100) and 2-D RoPE after normalisation."""

    def __init__(self, C: int, H: int):
        super().__init__()
        self.H, self.c = H, C // H
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, H, 1, 1), 4.0).log())
        self.max_scale_mul = math.log(100.0)
        self.mat_qkv = nn.Linear(C, 3 * C, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(C))
        self.v_bias = nn.Parameter(torch.zeros(C))
        self.register_buffer("zero_k_bias", torch.zeros(C))  # persistent: it is in the released checkpoints
        self.proj = nn.Linear(C, C)

    def forward(self, x_BLC, rope_cos, rope_sin, mask=None, cache: KVCache | None = None, layer: int = 0):
        B, L, C = x_BLC.shape
        bias = torch.cat([self.q_bias, self.zero_k_bias, self.v_bias])  # keys get no bias (pitfall 3)
        q, k, v = F.linear(x_BLC, self.mat_qkv.weight, bias).view(B, L, 3, self.H, self.c).permute(2, 0, 3, 1, 4)
        scale_mul = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()
        q = F.normalize(q.float(), dim=-1, eps=1e-12) * scale_mul  # fp32 even under autocast
        k = F.normalize(k.float(), dim=-1, eps=1e-12)
        q, k = apply_rope(q, rope_cos, rope_sin), apply_rope(k, rope_cos, rope_sin)
        if cache is not None:
            k, v = cache.extend(layer, k, v)
        out_BHLc = attend(q, k, v, mask=mask, scale=1.0)  # cosine attention: softmax scale 1
        return self.proj(out_BHLc.transpose(1, 2).reshape(B, L, C))


class CrossAttention(nn.Module):
    """Attention from image tokens (or one learned query, `for_attn_pool`) to the variable-length text."""

    def __init__(self, C: int, kv_dim: int, H: int, for_attn_pool: bool = False):
        super().__init__()
        self.H, self.c = H, C // H
        self.for_attn_pool = for_attn_pool
        if for_attn_pool:
            q = torch.empty(1, H, self.c)
            nn.init.trunc_normal_(q, mean=0, std=math.sqrt(1 / C / 3))
            self.mat_q = nn.Parameter(q)
        else:
            self.mat_q = nn.Linear(C, C, bias=True)
        self.mat_kv = nn.Linear(kv_dim, 2 * C, bias=False)
        self.v_bias = nn.Parameter(torch.zeros(C))
        self.register_buffer("zero_k_bias", torch.zeros(C))
        self.proj = nn.Linear(C, C)

    def forward(self, x_BLC: torch.Tensor | None, kv_BSD: torch.Tensor, keep_B11S: torch.Tensor) -> torch.Tensor:
        B, S = kv_BSD.shape[:2]
        kv = F.linear(kv_BSD, self.mat_kv.weight, torch.cat([self.zero_k_bias, self.v_bias]))
        k, v = kv.view(B, S, 2, self.H, self.c).permute(2, 0, 3, 1, 4)  # (B, H, S, c) each
        if self.for_attn_pool:
            q = self.mat_q.to(kv.dtype).expand(B, -1, -1)[:, :, None, :]  # (B, H, 1, c)
        else:
            q = self.mat_q(x_BLC).view(B, -1, self.H, self.c).transpose(1, 2)
        out = attend(q, k, v, mask=keep_B11S)  # scale 1/sqrt(c)
        return self.proj(out.transpose(1, 2).reshape(B, q.shape[2], -1))


class FFN(nn.Module):
    def __init__(self, C: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(C, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, C)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class CrossAttnBlock(nn.Module):
    """AdaLN(SA) -> CA -> AdaLN(FFN); γ1,γ2,s1,s2,b1,b2 = ada_gss + shared_ada_lin(cond) (spec §1.4)."""

    def __init__(self, cfg: TransformerConfig, drop_path: float):
        super().__init__()
        C = cfg.embed_dim
        self.sa = SelfAttention(C, cfg.num_heads)
        self.ca = CrossAttention(C, C, cfg.num_heads)
        self.ffn = FFN(C, cfg.ffn_dim)
        self.ln_wo_grad = nn.LayerNorm(C, eps=cfg.norm_eps, elementwise_affine=False)
        self.ca_norm = nn.LayerNorm(C, eps=cfg.norm_eps, elementwise_affine=True)
        self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, C) / C**0.5)
        self.drop_path = DropPath(drop_path)

    def forward(self, x_BLC, gss_B16C, cond: Condition, rope_cos, rope_sin, mask=None, cache=None, layer=0):
        g1, g2, s1, s2, b1, b2 = (self.ada_gss + gss_B16C).float().unbind(2)  # each (B, 1, C), fp32
        h = self.ln_wo_grad(x_BLC.float()) * (1 + s1) + b1
        # In place, as the release (`x_sa.mul_(gamma1)`): under bf16 autocast the gated branch and its drop path stay
        # bf16 (half the traffic of an fp32 copy); the sum with the fp32 residual stream is fp32.
        x_BLC = x_BLC + self.drop_path(self.sa(h, rope_cos, rope_sin, mask, cache, layer).mul_(g1))
        x_BLC = x_BLC + self.ca(self.ca_norm(x_BLC), cond.ca_kv_BSC, cond.ca_keep).float()  # no gate (ca_gamma=1)
        h = self.ln_wo_grad(x_BLC.float()) * (1 + s2) + b2
        return x_BLC + self.drop_path(self.ffn(h) * g2)


    def compile_forward(self, **options) -> None:
        """torch.compile this block's forward in place. The module stays itself: no `_orig_mod.` wrapper, so the
        state-dict keys stay the release's, and hooks on the module (FSDP2's gather/reshard, the activation-checkpoint
        wrapper around it) run outside the compiled region, as torchtitan's per-block compile inside FSDP2 units.
        All blocks share one compiled graph (DropPath keeps its rate in a tensor); call before or after sharding."""
        self.forward = torch.compile(self.forward, **options)


class TextAttentivePool(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.ca = CrossAttention(cfg.embed_dim, cfg.text_channels, cfg.pool_heads, for_attn_pool=True)

    def forward(self, kv_BST, keep):
        return self.ca(None, kv_BST, keep).squeeze(1)  # (B, C)


class AdaLNBeforeHead(nn.Module):
    def __init__(self, C: int, eps: float):
        super().__init__()
        self.C = C
        self.ln_wo_grad = nn.LayerNorm(C, eps=eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 2 * C))

    def forward(self, x_BLC, cond_BC):
        scale, shift = self.ada_lin(cond_BC).view(-1, 1, 2, self.C).unbind(2)  # order: scale, shift
        return self.ln_wo_grad(x_BLC) * (1 + scale) + shift


class MultipleLayers(nn.Module):
    """One FSDP wrap unit of the release; only here so the keys read block_chunks.{c}.module.{j}."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.module = nn.ModuleList(blocks)


class InfinityTransformer(nn.Module):
    """Infinity: text-conditioned bitwise next-scale prediction. See module docstring for the two call paths."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg.validate()
        C, T = cfg.embed_dim, cfg.text_channels
        init_std = math.sqrt(1 / C / 3)
        # Seeded on the CPU (the same values on every device), then placed where the module is being built: a
        # `with torch.device("cuda")` or "meta" context (a CPU generator cannot fill a CUDA tensor).
        build_device = torch.empty(0).device
        uncond = torch.empty(cfg.text_maxlen, T, device="cpu")
        if build_device.type != "meta":
            nn.init.trunc_normal_(uncond, std=1.2, generator=torch.Generator().manual_seed(0))
        self.cfg_uncond = nn.Parameter((uncond / T**0.5).to(build_device))  # learned "empty caption", raw T5 space
        self.pos_start = nn.Parameter(torch.empty(1, 1, C))
        nn.init.trunc_normal_(self.pos_start, std=init_std)
        self.text_norm = FastRMSNorm(T, eps=cfg.norm_eps)
        self.text_proj_for_sos = TextAttentivePool(cfg)
        self.text_proj_for_ca = nn.Sequential(nn.Linear(T, C), nn.GELU(approximate="tanh"), nn.Linear(C, C))
        self.lvl_embed = nn.Embedding(cfg.num_levels, C)
        nn.init.trunc_normal_(self.lvl_embed.weight, std=init_std)
        self.word_embed = nn.Linear(cfg.d_vae, C)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))
        dpr = [cfg.drop_path_rate * i / max(1, cfg.depth - 1) for i in range(cfg.depth)]
        blocks = [CrossAttnBlock(cfg, dpr[i]) for i in range(cfg.depth)]
        per = cfg.depth // cfg.block_chunks
        self.block_chunks = nn.ModuleList(MultipleLayers(blocks[c * per : (c + 1) * per]) for c in range(cfg.block_chunks))
        self.head_nm = AdaLNBeforeHead(C, cfg.norm_eps)
        self.head = nn.Linear(C, 2 * cfg.d_vae)

    # ---------------------------------------------------------------- helpers
    def blocks(self) -> list[CrossAttnBlock]:
        return [b for chunk in self.block_chunks for b in chunk.module]

    def compile_blocks(self, **options) -> None:
        """torch.compile every block in place (`CrossAttnBlock.compile_forward`); options go to torch.compile."""
        for blk in self.blocks():
            blk.compile_forward(**options)

    def condition(self, text: PackedText, uncond_B: torch.Tensor | None = None) -> Condition:
        """Text -> Condition. `uncond_B` (bool, B) replaces those captions by cfg_uncond rows (CFG / caption drop)."""
        # Captions may be encoded on another device than the model's (a CPU text encoder feeding a GPU transformer).
        feats_NT, lens_B = text.features_NT.to(self.cfg_uncond.device).float(), text.lens_B
        if uncond_B is not None and bool(uncond_B.any()):
            pieces, start = [], 0
            for b, n in enumerate(lens_B.tolist()):
                if n > self.cfg.text_maxlen:
                    raise ValueError(f"caption {b} has {n} tokens > text_maxlen {self.cfg.text_maxlen}")
                pieces.append(self.cfg_uncond[:n] if bool(uncond_B[b]) else feats_NT[start : start + n])
                start += n
            feats_NT = torch.cat(pieces)
        kv_NT = self.text_norm(feats_NT)
        kv_BST, keep = pad_packed(kv_NT, lens_B)
        cond_BC = self.text_proj_for_sos(kv_BST, keep).float()
        ca_kv_BSC = self.text_proj_for_ca(kv_BST)
        with torch.autocast(cond_BC.device.type, enabled=False):  # fp32 in the release's trainer and sampler alike
            gss_B16C = self.shared_ada_lin(cond_BC).view(-1, 1, 6, self.cfg.embed_dim).float()
        return Condition(cond_BC, gss_B16C, ca_kv_BSC, keep)

    def logits(self, x_BLC: torch.Tensor, cond_BC: torch.Tensor) -> torch.Tensor:
        """Head in fp32 (autocast off): (B, L, C) -> (B, L, 2d); channel pair (2k, 2k+1) = logits of bit k."""
        with torch.autocast(x_BLC.device.type, enabled=False):
            return self.head(self.head_nm(x_BLC.float(), cond_BC.float()))

    def _rope(self, schedule: Schedule, full_hw, device):
        return _rope_table(tuple(schedule), tuple(full_hw) if full_hw else None, self.cfg.head_dim, self.cfg.rope_base, str(device))

    # ---------------------------------------------------------------- teacher forcing
    def forward(
        self,
        text: PackedText,
        x_BLd_wo_prefix: torch.Tensor,
        scale_schedule: Schedule,
        uncond_B: torch.Tensor | None = None,
        full_hw: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Teacher-forced bit logits for every scale.

        Args:
            text: PackedText of B captions (raw T5 features + lengths).
            x_BLd_wo_prefix: (B, L - 1, d) next-scale inputs of scales 1..K-1 (scale 0's input is the SOS token),
                i.e. the accumulated codes of scales < i resized to scale i, as ±1/sqrt(d)-valued vectors.
            scale_schedule: K transformer grids (h, w), coarse to fine; L = sum(h * w).
            uncond_B: optional bool (B,) — captions to replace by the learned unconditional embedding (caption
                dropout for CFG training; draw it with the training generator at cfg.cond_drop_rate).
            full_hw: RoPE normalisation grid; default: the 1M grid for the schedule's aspect ratio.
        Returns:
            (B, L, 2d) fp32 logits; reshape to (B, L, d, 2) for the per-bit cross-entropy.
        """
        schedule = [tuple(s[-2:]) for s in scale_schedule]
        lens = [h * w for h, w in schedule]
        B = x_BLd_wo_prefix.shape[0]
        if x_BLd_wo_prefix.shape[1:] != (sum(lens) - lens[0], self.cfg.d_vae):
            raise ValueError(
                f"x_BLd_wo_prefix has shape {tuple(x_BLd_wo_prefix.shape)}, expected (B, {sum(lens) - lens[0]}, "
                f"{self.cfg.d_vae}) for schedule {schedule}"
            )
        if lens[0] != 1:
            raise ValueError(f"the first scale must be 1x1 (the SOS token), got {schedule[0]}")
        # The release's trainer runs the text side and the input embedding with autocast off (fp32): its blocks are
        # where bf16 pays; the text projections and the d-wide word embedding are a sliver of the FLOPs.
        with torch.autocast(x_BLd_wo_prefix.device.type, enabled=False):
            cond = self.condition(text, uncond_B)
            sos_B1C = cond.cond_BC[:, None] + self.pos_start
            x_BLC = torch.cat([sos_B1C, self.word_embed(x_BLd_wo_prefix.float())], dim=1)
            lvl_L = torch.cat([torch.full((n,), i, device=x_BLC.device) for i, n in enumerate(lens)])
            x_BLC = x_BLC + self.lvl_embed(lvl_L)  # once, before the first block
        mask = self_attention_mask(lens, x_BLC.device, torch.is_grad_enabled())
        cos, sin = self._rope(schedule, full_hw, x_BLC.device)
        for i, blk in enumerate(self.blocks()):
            x_BLC = blk(x_BLC, cond.gss_B16C, cond, cos, sin, mask, None, i)
        return self.logits(x_BLC, cond.cond_BC).view(B, sum(lens), -1)

    # ---------------------------------------------------------------- one scale with a KV cache
    def new_cache(self) -> KVCache:
        return KVCache(self.cfg.depth)

    def forward_scale(
        self,
        cond: Condition,
        x_Bld: torch.Tensor | None,
        si: int,
        scale_schedule: Schedule,
        cache: KVCache,
        full_hw: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Logits (B, l, 2d) of scale `si`, attending to the cached scales < si; appends this scale to `cache`.

        Args:
            cond: from `condition()` (batch already doubled for CFG if wanted).
            x_Bld: (B, h*w, d) next-scale input of scale si; None for si = 0 (the SOS token).
        """
        schedule = [tuple(s[-2:]) for s in scale_schedule]
        h, w = schedule[si]
        if si == 0:
            x_BlC = cond.cond_BC[:, None] + self.pos_start
        else:
            if x_Bld is None or x_Bld.shape[1:] != (h * w, self.cfg.d_vae):
                raise ValueError(f"scale {si} needs input (B, {h * w}, {self.cfg.d_vae}), got {getattr(x_Bld, 'shape', None)}")
            x_BlC = self.word_embed(x_Bld.float())
        start = sum(a * b for a, b in schedule[:si])
        if cache.tokens != start:
            raise ValueError(f"KV cache holds {cache.tokens} tokens but scale {si} starts at token {start}")
        x_BlC = x_BlC + self.lvl_embed.weight[si]
        cos, sin = self._rope(schedule, full_hw, x_BlC.device)
        cos, sin = cos[start : start + h * w], sin[start : start + h * w]
        for i, blk in enumerate(self.blocks()):
            x_BlC = blk(x_BlC, cond.gss_B16C, cond, cos, sin, None, cache, i)  # all cached keys are visible
        cache.tokens += h * w
        return self.logits(x_BlC, cond.cond_BC)
