"""`ShardConfig`: every knob of the shard stage (download → validate → centre-crop/resize → WebDataset shard).

Defaults are the paper's data (1024² centre crops of photos whose short side is ≥ 1024, JPEG q95); the `tiny` preset
is the CPU demo/test setting (256²). The config is saved as `{root}/hr/config.json` and its hash in every
`_stats.json`, so a shard always says how it was made (STYLE G3).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from dataset import configs

UNSPLASH_FORMATS = ("png", "jpg", "pjpg", "webp")  # imgix `fm` values whose output Pillow decodes


@dataclass(frozen=True)
class ShardConfig:
    # --- output image (docs/DESIGN.md §3: {key}.jpg is image_size² RGB, JPEG q95)
    image_size: int = 1024  # side of the square centre crop written to the tar
    min_side: int = 1024  # short side below this is rejected as `too_small` (unless upscale_small)
    upscale_small: bool = False  # upscale images whose short side is < min_side instead of rejecting them
    upscale_min_side: int = 64  # even with upscale_small, a short side below this is `too_small` (1×1 pixels)
    jpeg_quality: int = 95  # img2dataset's default and the paper's data
    jpeg_draft: bool = True  # let libjpeg decode at 1/2, 1/4, 1/8 scale when the result stays ≥ image_size
    max_pixels: int = 80_000_000  # decompression-bomb limit on width*height, checked from the header
    unsplash_width: int = 0  # ?w= for Unsplash imgix URLs; 0 = derived from the row's aspect ratio (see sources)
    # imgix output of Unsplash URLs (always with fit=max, so the CDN never enlarges a photo). imgix re-encodes every
    # resized image, as JPEG q=75 unless told otherwise; `fm=png` is lossless, so the only generation loss left is
    # our own q95 encode. `jpg` with `unsplash_quality=100` costs ~3x less bandwidth but adds a q100 generation.
    unsplash_format: str = "png"  # imgix `fm`: png (lossless), jpg, pjpg or webp
    unsplash_quality: int = 100  # imgix `q` (1-100) for the lossy formats; sent always, ignored by imgix for png
    # --- sharding
    shard_size: int = 1000  # input rows per shard (img2dataset uses 10k; 1k keeps retries cheap)
    dedup: bool = True  # drop exact duplicates (sha256 of the downloaded bytes) within a build
    # --- download
    threads: int = 16  # concurrent downloads per shard (network-bound; decode runs in the same threads)
    connect_timeout: float = 5.0  # seconds to open the TCP connection
    read_timeout: float = 10.0  # seconds without a byte from the server
    total_timeout: float = 30.0  # hard deadline for one attempt (headers + body), so a trickling server cannot hang us
    retries: int = 2  # extra attempts after a connection error, timeout, 429 or 5xx (4xx are final)
    backoff: float = 0.5  # seconds before the first retry, doubled each time
    max_redirects: int = 5  # a redirect loop fails with `too_many_redirects`
    max_body_bytes: int = 50 * 1024 * 1024  # larger bodies are refused (`too_large`), by header or while reading
    respect_robots: bool = True  # honour `X-Robots-Tag: noai / noimageai` opt-outs (img2dataset does too)
    user_agent: str = "nsarm-dataset/0.1 (+https://github.com/Xiangtaokong/NSARM)"
    # --- distribution and reproducibility
    cpus_per_task: float = 1.0  # Ray CPU resources declared per shard task
    max_shard_retries: int = 1  # a failed shard (an error, or its Ray worker died) is re-run this many times
    seed: int = 0  # recorded with the shard; sampling (none in this stage) and the reader's shuffle start from it

    def __post_init__(self):
        if self.image_size <= 0 or self.min_side <= 0 or self.shard_size <= 0 or self.threads <= 0:
            raise ValueError(f"ShardConfig: image_size, min_side, shard_size and threads must be > 0, got {self}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"ShardConfig.jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        if self.unsplash_format not in UNSPLASH_FORMATS:
            raise ValueError(f"ShardConfig.unsplash_format must be one of {UNSPLASH_FORMATS}, "
                             f"got {self.unsplash_format!r}")
        if not 1 <= self.unsplash_quality <= 100:
            raise ValueError(f"ShardConfig.unsplash_quality must be in [1, 100], got {self.unsplash_quality}")
        if self.retries < 0 or self.max_redirects < 0:
            raise ValueError(f"ShardConfig: retries and max_redirects must be >= 0, got {self}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ShardConfig:
        """Load a saved config; unknown keys (from a newer version) are an error naming them."""
        return configs.from_dict(cls, d)

    def override(self, **kw) -> ShardConfig:
        """A copy with the given fields changed; `None` values are ignored (CLI flags that were not given)."""
        return configs.override(self, **kw)


# Fields that do not change the bytes of the output (speed and politeness knobs) are left out of the hash, so a
# rerun with more threads or a longer timeout still resumes the same dataset.
_NON_CONTENT_FIELDS = frozenset({
    "threads", "connect_timeout", "read_timeout", "total_timeout", "retries", "backoff", "cpus_per_task",
    "max_shard_retries", "user_agent",
})


def config_hash(cfg: ShardConfig) -> str:
    """12 hex digits identifying the content-relevant settings of `cfg`."""
    return configs.config_hash(cfg, exclude=_NON_CONTENT_FIELDS)


PRESETS: dict[str, ShardConfig] = {
    "paper": ShardConfig(),
    # CPU demo and tests: 256² crops of the bundled photos (300–1411 px), small shards, short timeouts.
    "tiny": ShardConfig(image_size=256, min_side=256, shard_size=8, threads=4, connect_timeout=2.0,
                        read_timeout=2.0, total_timeout=5.0, retries=1, backoff=0.1),
}


def shard_config(preset: str, **overrides) -> ShardConfig:
    """The named preset with field overrides (`None` = not given); an unknown name raises naming the choices."""
    return configs.resolve(PRESETS, preset, "shard").override(**overrides)
