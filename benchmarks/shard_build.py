"""Images/s of the shard stage vs a plain requests+PIL builder, and peak memory for 100 vs 10,000-sample shards.

    .venv/bin/python benchmarks/shard_build.py [--n 600] [--processes 2] [--threads 16] [--mem-sizes 100,10000]

Both sides fetch the same N URLs from one local HTTP server on 127.0.0.1 (1600×1200 JPEG q90 photos made from the
bundled real photographs; URLs differ by a query string the server ignores) and write the same output: WebDataset
tars of 1024² centre crops, JPEG q95, plus a JSON per sample, with the same number of processes and download
threads. The reference follows img2dataset's architecture (threads download, the process's main thread decodes,
resizes with PIL's area filter and encodes) with requests + PIL: img2dataset itself is not installable into the
project venv without downgrading opencv/webdataset/pandas; `--img2dataset /path/venv/bin/img2dataset` also runs
the real one from a separate venv (`python -m venv v && v/bin/pip install img2dataset==1.47.0`). Ours is `build_shards` on a Ray cluster started
before the timer (production runs on a standing cluster); one warm-up shard starts its workers. One timed run each.
Memory: `build_shards(use_ray=False)` in a fresh subprocess per size, one shard holding all samples, peak RSS.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nsarm.compat import ensure_torchvision_importable  # noqa: E402

ensure_torchvision_importable()  # an entry point: the shim before anything imports torchvision


def make_photos(folder: Path, n_distinct: int = 8) -> list[Path]:
    """1600×1200 JPEGs (q90) from the bundled colour photos: the size class of Unsplash `?w=1600` downloads."""
    from PIL import Image

    from dataset.samples import export_sample_photos

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for p in export_sample_photos(folder / "orig")[:n_distinct]:
        with Image.open(p.path) as im:
            big = im.convert("RGB").resize((1600, 1200), Image.Resampling.BICUBIC)
        dest = folder / f"{p.path.stem}.jpg"
        big.save(dest, "JPEG", quality=90)
        out.append(dest)
    return out


def url_list(base: str, photos: list[Path], n: int, out: Path) -> Path:
    import pandas as pd

    pd.DataFrame({"url": [f"{base}/{photos[i % len(photos)].name}?n={i}" for i in range(n)]}).to_csv(out, index=False)
    return out


# --- reference: img2dataset's layout (threads download, one thread decodes/resizes/encodes) with requests + PIL
def _ref_shard(args) -> int:
    urls, tar_path, threads, size = args
    import requests
    from PIL import Image, ImageOps

    session = requests.Session()
    cpu0 = time.process_time()

    def get(url):
        try:
            r = session.get(url, timeout=10)
            return url, (r.content if r.status_code == 200 else None)
        except requests.RequestException:
            return url, None

    n = 0
    with tarfile.open(tar_path, "w") as tar, ThreadPoolExecutor(threads) as pool:
        for i, (url, data) in enumerate(pool.map(get, urls)):
            if data is None:
                continue
            try:
                with Image.open(io.BytesIO(data)) as im:
                    im = ImageOps.exif_transpose(im).convert("RGB")
                    w, h = im.size
                    s = size / min(w, h)
                    im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BOX)
                    left, top = (im.width - size) // 2, (im.height - size) // 2
                    im = im.crop((left, top, left + size, top + size))
                    buf = io.BytesIO()
                    im.save(buf, "JPEG", quality=95)
            except Exception:
                continue
            key = f"{i:09d}"
            for ext, payload in (("jpg", buf.getvalue()), ("json", json.dumps({"url": url, "key": key}).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            n += 1
    return n, time.process_time() - cpu0


def run_reference(urls: list[str], out: Path, processes: int, threads: int, size: int) -> tuple[int, float, float]:
    """Returns (images, wall seconds, CPU seconds of the worker processes)."""
    out.mkdir(parents=True, exist_ok=True)
    per = (len(urls) + processes - 1) // processes
    jobs = [(urls[i:i + per], str(out / f"{k:05d}.tar"), threads, size) for k, i in enumerate(range(0, len(urls), per))]
    with mp.get_context("spawn").Pool(processes) as pool:
        # warm-up (process start + imports) outside the timer, as for ours
        pool.map(_ref_shard, [(urls[:2], str(out / f"warm{k}.tar"), threads, size) for k in range(processes)])
        t0 = time.perf_counter()
        done = pool.map(_ref_shard, jobs)
        return sum(n for n, _ in done), time.perf_counter() - t0, sum(c for _, c in done)


def run_ours(csv: Path, root: Path, n: int, processes: int, threads: int, size: int) -> tuple[int, float, float]:
    """Returns (images, wall seconds, CPU seconds of the shard tasks, from their _stats.json)."""
    import ray

    from dataset.build import build_shards
    from dataset.config import ShardConfig

    cfg = ShardConfig(image_size=size, min_side=size, shard_size=(n + processes - 1) // processes, threads=threads,
                      dedup=False)  # the reference does not dedup either (and the URLs repeat 8 photos)
    ray.init(num_cpus=processes, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        warm = cfg.override(shard_size=2)  # start the workers (imports) before the timer, as a standing cluster has
        build_shards(str(csv), str(root / "warmup"), warm, limit=2 * processes, progress=lambda *a: None)
        t0 = time.perf_counter()
        summary = build_shards(str(csv), str(root / "ds"), cfg, progress=lambda *a: None)
        return summary["samples"], time.perf_counter() - t0, summary["totals"]["cpu_s"]
    finally:
        ray.shutdown()


def run_img2dataset(binary: str, csv: Path, out: Path, n: int, processes: int, threads: int,
                    size: int) -> tuple[int, float, float]:
    """img2dataset from its own venv (it pins older opencv/webdataset/pandas than ours), same URLs and output.

    Returns (images, wall seconds, CPU seconds of its process tree), both including its start-up."""
    cmd = [binary, "--url_list", str(csv), "--input_format", "csv", "--url_col", "url", "--output_format",
           "webdataset", "--output_folder", str(out), "--processes_count", str(processes), "--thread_count",
           str(threads), "--image_size", str(size), "--resize_mode", "center_crop", "--encode_quality", "95",
           "--number_sample_per_shard", str((n + processes - 1) // processes), "--distributor", "multiprocessing",
           "--timeout", "10", "--retries", "0", "--enable_wandb", "False"]
    ru0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    wall, ru1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)  # its pool workers are reaped: included
    stats = [json.loads(p.read_text()) for p in sorted(out.glob("*_stats.json"))]
    n_ok = sum(s["successes"] for s in stats)
    # its steady state, without the ~3-8 s of start-up: images over the longest shard duration of its stats
    print(f"  (img2dataset by its own stats: {n_ok / max(s['duration'] for s in stats):.1f} images/s, start-up "
          f"excluded)")
    return n_ok, wall, cpu


def peak_rss_child(csv: str, root: str, n: int, size: int, threads: int) -> None:
    """Subprocess body: build one shard of n samples in-process, print peak RSS in MiB."""
    from dataset.build import build_shards
    from dataset.config import ShardConfig

    cfg = ShardConfig(image_size=size, min_side=size, shard_size=n, threads=threads, dedup=False)
    s = build_shards(csv, root, cfg, limit=n, use_ray=False, progress=lambda *a: None)
    print(json.dumps({"n": n, "successes": s["samples"], "wall_s": s["seconds"],
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--mem-sizes", default="100,10000", help="comma-separated shard sizes for the memory test; '' skips")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds of the speed comparison")
    ap.add_argument("--img2dataset", help="img2dataset executable of a separate venv: also measure the real thing")
    ap.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        return peak_rss_child(args._child[0], args._child[1], int(args._child[2]), args.size, args.threads)

    from dataset.httpserve import PhotoServer

    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        photos = make_photos(tmp / "photos")
        with PhotoServer(tmp / "photos") as srv:
            if not args.skip_speed:
                csv = url_list(srv.base_url, photos, args.n, tmp / "urls.csv")
                urls = [f"{srv.base_url}/{photos[i % len(photos)].name}?n={i}" for i in range(args.n)]
                print(f"speed: {args.n} URLs, {args.processes} processes x {args.threads} threads, {args.size}² q95")
                for r in range(args.rounds):  # sides alternate, so a change in machine load hits each side
                    res = {"reference requests+PIL": run_reference(urls, tmp / f"ref{r}", args.processes,
                                                                   args.threads, args.size),
                           "ours build_shards/Ray": run_ours(csv, tmp / f"ours{r}", args.n, args.processes,
                                                             args.threads, args.size)}
                    if args.img2dataset:
                        res["img2dataset 1.47.0"] = run_img2dataset(args.img2dataset, csv, tmp / f"i2d{r}", args.n,
                                                                    args.processes, args.threads, args.size)
                    for name, (n, t, c) in res.items():
                        print(f"  round {r}: {name:24s} {n} images in {t:6.1f} s = {n / t:5.1f} images/s; "
                              f"{1000 * c / max(n, 1):3.0f} ms CPU per image")
                    n_o, t_o, c_o = res["ours build_shards/Ray"]
                    for name, (n, t, c) in res.items():
                        if name.startswith("ours"):
                            continue
                        print(f"  round {r}: ours vs {name}: {(n_o / t_o) / (n / t):.2f}x images/s, "
                              f"{(c / n) / (c_o / n_o):.2f}x less CPU per image")
            sizes = [int(x) for x in args.mem_sizes.split(",") if x]
            if sizes:
                csv = url_list(srv.base_url, photos, max(sizes), tmp / "mem.csv")
                rows = []
                for n in sizes:
                    out = subprocess.run([sys.executable, __file__, "--size", str(args.size), "--threads",
                                          str(args.threads), "--_child", str(csv), str(tmp / f"mem{n}"), str(n)],
                                         capture_output=True, text=True, check=True)
                    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                for r in rows:
                    print(f"memory: shard of {r['n']} samples: peak RSS {r['peak_rss_mib']:.0f} MiB "
                          f"({r['successes']} processed in {r['wall_s']:.0f} s)")
                print(f"  peak RSS ratio {rows[-1]['n']} vs {rows[0]['n']}: "
                      f"{rows[-1]['peak_rss_mib'] / rows[0]['peak_rss_mib']:.2f}x")


if __name__ == "__main__":
    main()
