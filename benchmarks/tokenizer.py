"""Tokenizer throughput: encode (raw features + multi-scale BSQ over the schedule) + decode, images/s on CPU.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/tokenizer.py                       # ours: tiny, d32-f16
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/tokenizer.py --infinity-repo /path/to/Infinity

Work per image: 256² RGB → encoder → Alg. 1 over the preset's 1:1 '0.06M' schedule (VAE grids ending at the full
latent: 32×32 for tiny, 16×16 for d32-f16) → decoder. The reference is the official implementation
(FoundationVision/Infinity `infinity/models/bsq_vae`, `vae_model(...)`, `.encode(x, schedule)` + `.decode(z)`), run
from a local checkout given with --infinity-repo (nothing of it is part of this project); it is built with the same
random weights, so the script also reports the largest output difference. The official builder fixes base_ch=128,
so the reference exists for d32-f16 and d14-f8-patchify only. OMP_WAIT_POLICY=PASSIVE matters on a shared box:
with spinning OpenMP threads a loaded 2-core machine runs 10-20× slower.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from nsarm.compat import ensure_torchvision_importable  # noqa: E402
from nsarm.config import TOKENIZER_PRESETS  # noqa: E402
from nsarm.scales import schedule_for  # noqa: E402
from nsarm.tokenizer import build_tokenizer  # noqa: E402

ensure_torchvision_importable()  # an entry point: the shim before anything imports torchvision


def _time(fn, n: int) -> float:
    fn()  # warm-up (allocator, oneDNN primitive cache)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - t0)


def _reference(repo: Path, preset: str):
    import types

    # Register `infinity` and `infinity.models` as bare packages: the checkout's infinity/models/__init__.py imports
    # the transformer, which needs flash_attn; the VAE modules need none of it.
    for name, sub in (("infinity", "infinity"), ("infinity.models", "infinity/models")):
        if name not in sys.modules:
            pkg = types.ModuleType(name)
            pkg.__path__ = [str(repo / sub)]
            sys.modules[name] = pkg
    from infinity.models.bsq_vae.vae import vae_model  # the official builder, from the user's checkout

    cfg = TOKENIZER_PRESETS[preset]
    mult = list(cfg.ch_mult)
    return vae_model(None, "dynamic", cfg.codebook_dim, 2**cfg.codebook_dim, patch_size=cfg.downsample,
                     encoder_ch_mult=mult, decoder_ch_mult=mult)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny", "d32-f16"], choices=sorted(TOKENIZER_PRESETS))
    ap.add_argument("--n", type=int, default=4, help="timed images per measurement (batch 1)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--infinity-repo", type=Path, help="local FoundationVision/Infinity checkout for the reference")
    a = ap.parse_args()
    torch.manual_seed(0)
    x = torch.rand(1, 3, a.size, a.size) * 2 - 1
    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, {a.size}² images, batch 1")
    print("| preset | params | ours img/s | reference img/s | ours/ref | max |Δ| output |")
    print("|---|---|---|---|---|---|")
    for preset in a.presets:
        cfg = TOKENIZER_PRESETS[preset]
        lat = a.size // cfg.downsample
        # the 1:1 '0.06M' transformer grids ×patch (VAE grids), cut at the latent, which is the last scale
        grids = [(h * cfg.patch, w * cfg.patch) for h, w in schedule_for("0.06M").grids if h * cfg.patch < lat]
        grids += [(lat, lat)]
        ours = build_tokenizer(preset).eval()
        n_params = sum(p.numel() for p in ours.parameters())

        def run_ours(tok=ours, grids=grids):
            with torch.no_grad():
                return tok.decode(tok.encode_bits(x, grids).f_hat)

        ips = _time(run_ours, a.n)
        ref_ips, ratio, diff = "–", "–", "–"
        if a.infinity_repo and preset != "tiny":
            ref = _reference(a.infinity_repo, preset)
            ours.load_state_dict(ref.state_dict())  # identical weights on both sides
            sched5 = [(1, h, w) for h, w in grids]

            def run_ref(ref=ref, sched5=sched5):
                with torch.no_grad():
                    z = ref.encode(x, sched5)[1]
                    return ref.decode(z)

            r = _time(run_ref, a.n)
            ips = _time(run_ours, a.n)  # re-measure ours right after, same machine state
            diff = f"{(run_ours() - run_ref()).abs().max().item():.1e}"
            ref_ips, ratio = f"{r:.2f}", f"{ips / r:.2f}×"
        print(f"| {preset} | {n_params / 1e6:.1f}M | {ips:.2f} | {ref_ips} | {ratio} | {diff} |", flush=True)


if __name__ == "__main__":
    main()
