"""Training throughput per worker: samples/s and tokens/s of one optimiser step (forward + backward + AdamW).

    python benchmarks/training.py [--threads 1] [--repeats 3] [--batch 2] [--depth-2b 2] [--pn-2b 0.06M] [--bf16]
                                  [--attention sdpa|flex] [--compile] [--width-2b 2048] [--no-tiny]

Models (CPU, fp32, random weights, synthetic latents — the frozen tokenizer is excluded, its latents are cached):
  tiny        the `tiny` preset, stage 1 (map net MSE) and stage 2 (end-to-end bitwise CE, Alg. 2), 521 tokens
  2b-d2       Infinity-2B shapes (C 2048, 16 heads, 32-bit tokens) with depth reduced to 2, stage-2-style bitwise CE
              on the '0.06M' schedule (521 tokens); no transformation net (2B has none)
Reference, measured in the same run: a plain PyTorch `nn.TransformerEncoder` (pre-norm, GELU) of the same width,
depth, heads, FF width and token count, with a linear bit head and the same CE + AdamW step: what the transformer
part would cost without Infinity's AdaLN, cross-attention and RoPE. The ratio ours/reference shows that overhead.
On GPU (when one is present) every step runs under bf16 autocast (as loop.py trains DDP on CUDA; --no-bf16 for
fp32/TF32) and the script also prints MFU = 6 · N_params · tokens/s / peak_flops (bf16 dense peak given by
--peak-tflops); attention FLOPs are left out of the 6N rule, so MFU is understated at long sequences.
A second MFU column also counts attention: + 12 · depth · C · P per sample (forward 4·C·P for QKᵀ and AV, ×3 with the
backward), P = visible query-key pairs (block-causal: Σ_k l_k · (l_0 + … + l_k); causal reference: L(L+1)/2).
--depth-2b 32 --pn-2b 0.25M gives the full Infinity-2B transformer on 512² token counts (a GPU-sized run).
--attention flex runs the block-causal self-attention with FlexAttention (CUDA; on CPU training falls back to SDPA),
--compile compiles every block in place (`InfinityTransformer.compile_blocks`, the `compile` training option) and
every reference encoder layer alike. --width-2b shrinks the 2B-shaped model for CPU dry runs (benchmarks/gpu_check.sh).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from nsarm.attention import set_backend
from nsarm.compat import ensure_torchvision_importable
from nsarm.model import build_model
from nsarm.scales import get_schedule
from nsarm.text import build_tiny_text_encoder
from nsarm.train.steps import Stage2Options, stage1_loss, stage2_loss
from nsarm.transformer import InfinityTransformer, PackedText, TransformerConfig

ensure_torchvision_importable()  # an entry point: the shim before anything imports torchvision


def timed(step, repeats: int) -> float:
    step()  # warm-up (allocations, first-call overhead)
    best = float("inf")
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


AUTOCAST = {"enabled": False}  # set by main(): bf16 autocast on CUDA


def adamw_step(loss_fn, params):
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.97), fused=params[0].is_cuda)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=AUTOCAST["enabled"]):
            loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()

    return step


def attention_pairs(lens: list[int]) -> int:
    """Visible query-key pairs of the block-causal mask: scale k's l_k queries see the l_0 + … + l_k keys."""
    seen, pairs = 0, 0
    for n in lens:
        seen += n
        pairs += n * seen
    return pairs


def reference_step(cfg: TransformerConfig, B: int, L: int, device, compile_backend: str | None = None):
    with torch.device(device):
        layer = nn.TransformerEncoderLayer(cfg.embed_dim, cfg.num_heads, cfg.ffn_dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        enc = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
    if compile_backend:
        for lay in enc.layers:
            lay.compile(backend=compile_backend)
    emb, head = nn.Linear(cfg.d_vae, cfg.embed_dim).to(device), nn.Linear(cfg.embed_dim, 2 * cfg.d_vae).to(device)
    x = torch.randn(B, L, cfg.d_vae, device=device)
    y = torch.randint(0, 2, (B * L * cfg.d_vae,), device=device)
    mask = torch.triu(torch.full((L, L), float("-inf"), device=device), 1)  # same attention cost as block-causal
    params = [*enc.parameters(), *emb.parameters(), *head.parameters()]
    return adamw_step(lambda: F.cross_entropy(head(enc(emb(x), mask=mask)).reshape(-1, 2), y), params), params


def ours_transformer_step(cfg: TransformerConfig, grids, B: int, device, compile_backend: str | None = None):
    torch.manual_seed(0)
    with torch.device(device):  # built where it trains: initialising 2B parameters on the CPU takes minutes
        tr = InfinityTransformer(cfg)
    if compile_backend:
        tr.compile_blocks(backend=compile_backend)
    L = sum(h * w for h, w in grids)
    x = torch.randn(B, L - 1, cfg.d_vae, device=device)
    y = torch.randint(0, 2, (B * L * cfg.d_vae,), device=device)
    text = PackedText(torch.randn(B * 8, cfg.text_channels, device=device), torch.full((B,), 8))
    params = list(tr.parameters())
    return adamw_step(lambda: F.cross_entropy(tr(text, x, grids).reshape(-1, 2), y), params), params


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak for MFU (H100 SXM: 989)")
    p.add_argument("--depth-2b", type=int, default=2, help="depth of the Infinity-2B-shaped model (full: 32)")
    p.add_argument("--pn-2b", default="0.06M", help="scale schedule of the 2B-shaped model (0.06M/0.25M/0.60M/1M)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on with CUDA, off on CPU)")
    p.add_argument("--width-2b", type=int, default=2048, help="width of the 2B-shaped model (2048; smaller for CPU)")
    p.add_argument("--attention", choices=("sdpa", "flex"), default="sdpa", help="block-causal self-attention kernel")
    p.add_argument("--compile", action="store_true", help="torch.compile each block (ours) and encoder layer (reference)")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend ('aot_eager': the CPU dry run's, traces without generating code)")
    p.add_argument("--no-tiny", action="store_true", help="skip the tiny-preset rows")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    set_backend(a.attention)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    AUTOCAST["enabled"] = device.type == "cuda" if a.bf16 is None else a.bf16
    if AUTOCAST["enabled"] and device.type != "cuda":
        raise SystemExit("--bf16 needs CUDA (the CPU rows are fp32)")
    B = a.batch
    sched = get_schedule("0.06M", 1.0, 2)
    L = sched.num_tokens
    rows = [] if a.no_tiny else tiny_rows(B, sched, device, a.repeats)
    # Infinity-2B shapes at the chosen depth, width and schedule
    d, sched2b = a.depth_2b, get_schedule(a.pn_2b, 1.0, 1)
    grids2b, L2b = list(sched2b.grids), sched2b.num_tokens
    cfg2b = TransformerConfig(depth=d, block_chunks=min(d, 8), embed_dim=a.width_2b)
    backend = a.compile_backend if a.compile else None
    ours2b, p_ours = ours_transformer_step(cfg2b, grids2b, B, device, backend)
    ours_name, ref_name = f"2b-d{d} ours (Infinity block)", f"2b-d{d} reference encoder"
    rows.append((ours_name, timed(ours2b, a.repeats), sum(p.numel() for p in p_ours), L2b))
    del ours2b, p_ours
    ref2b, p_ref = reference_step(cfg2b, B, L2b, device, backend)
    rows.append((ref_name, timed(ref2b, a.repeats), sum(p.numel() for p in p_ref), L2b))
    del ref2b, p_ref
    lens2b = [h * w for h, w in grids2b]
    attn_flops = {ours_name: 12 * d * a.width_2b * attention_pairs(lens2b),
                  ref_name: 12 * d * a.width_2b * L2b * (L2b + 1) // 2}

    precision = "bf16 autocast" if AUTOCAST["enabled"] else "fp32"
    print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), {precision}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {B}, tokens/sample tiny {L} / 2b "
          f"{L2b} ({a.pn_2b}), 2b width {a.width_2b}, attention {a.attention}, compile {backend}, best of {a.repeats}")
    cuda = device.type == "cuda"
    print("| model | params | s/step | samples/s | tokens/s |" + (" MFU (6N) | MFU (6N + attention) |" if cuda else ""))
    print("|---|---|---|---|---|" + ("---|---|" if cuda else ""))
    for name, t, n, tokens in rows:
        extra = ""
        if cuda:
            peak = a.peak_tflops * 1e12
            extra = (f" {6 * n * B * tokens / t / peak:.1%} |"
                     f" {(6 * n * tokens + attn_flops.get(name, 0)) * B / t / peak:.1%} |")
        print(f"| {name} | {n:,d} | {t:.3f} | {B / t:.2f} | {B * tokens / t:,.0f} |{extra}")
    t = {name: t for name, t, _, _ in rows}
    if not a.no_tiny:
        print(f"ratio tiny stage 2 / reference encoder (time per step): "
              f"{t['tiny stage 2'] / t['tiny reference encoder']:.2f}")
    print(f"ratio 2b-d{d} ours / reference encoder (time per step):   {t[ours_name] / t[ref_name]:.2f}")
    if cuda:
        print(f"MFU = FLOPs per step / s per step / {a.peak_tflops:g} TFLOP/s; FLOPs = 6 · params · tokens "
              f"(+ 12 · depth · C · visible pairs for attention)")
        print(f"peak CUDA memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


def tiny_rows(B: int, sched, device, repeats: int) -> list[tuple[str, float, int, int]]:
    """(name, s/step, params, tokens) of the tiny preset's stage 1 and stage 2 losses and their reference encoder."""
    grids, L = list(sched.grids), sched.num_tokens
    rows = []
    torch.manual_seed(0)
    m = build_model("tiny", with_tokenizer=False).to(device).train()
    enc = build_tiny_text_encoder(d_model=64)
    z_lr, z_hr = torch.randn(B, 8, 8, 8, device=device), torch.randn(B, 8, 32, 32, device=device)
    text = enc.encode(["a photo of a cat"] * B)
    s1 = adamw_step(lambda: stage1_loss(m.map_transformer, z_lr, z_hr, sched.vae_grids, 4).loss,
                    list(m.map_transformer.parameters()))
    g = torch.Generator().manual_seed(0)
    opts = Stage2Options(k_t=4)
    s2_params = [*m.transformer.parameters(), *m.map_transformer.parameters()]
    s2 = adamw_step(lambda: stage2_loss(m.transformer, m.map_transformer, z_lr, z_hr, text, grids, 2, opts, g).loss,
                    s2_params)
    ref_tiny, ref_tiny_params = reference_step(m.cfg.transformer, B, L, device)
    for name, step, params in (("tiny stage 1", s1, list(m.map_transformer.parameters())),
                               ("tiny stage 2", s2, s2_params), ("tiny reference encoder", ref_tiny, ref_tiny_params)):
        rows.append((name, timed(step, repeats), sum(p.numel() for p in params)))
    return [(name, t, n, L) for name, t, n in rows]


if __name__ == "__main__":
    main()
