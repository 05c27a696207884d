"""The paper's metric suite (NSARM Table 1): PSNR/SSIM on Y, LPIPS, NIQE, CLIPIQA, MUSIQ, MANIQA, TOPIQ.

Every number comes from a well-kept library, each pinned to one stated variant (`SPECS`):
  PSNR        BasicSR `calculate_psnr(test_y_channel=True)`: ITU-R BT.601 Y (16-235), the SR convention
  SSIM        pyiqa `ssim`: Y of YIQ rounded to integers, contrast-structure map clipped at zero
  NIQE        pyiqa `niqe`: Y of YIQ (its own grey conversion), MATLAB pristine model (see `niqe_params_mat`)
  LPIPS       `lpips` package, AlexNet v0.1 (linear layers ship inside the package; AlexNet from a local file)
  CLIPIQA     pyiqa `clipiqa` (OpenAI CLIP RN50, pyiqa's antonym-prompt ensemble)
  MUSIQ       pyiqa `musiq` (KonIQ-10k, 0-100)
  MANIQA      pyiqa `maniqa-pipal` (PIPAL, as the diffusion-SR peers' scripts use; `maniqa` is KonIQ)
  TOPIQ       pyiqa `topiq_nr` (CFANet ResNet-50, KonIQ)

SSIM and NIQE follow `MetricConfig.protocol`: "pyiqa" (default) is the protocol behind the per-image numbers the
NSARM authors' lab and the diffusion-SR peers publish, so set means are comparable with Table 1; "basicsr" is
BasicSR's `calculate_ssim` / `calculate_niqe(convert_to='y')` on BT.601 Y (`BASICSR_VARIANTS`). PSNR is the same
under both (BasicSR and pyiqa agree to 0.003 dB).

Weights are never downloaded: they load from one local folder (`weights_dir`). A metric whose files are missing is
reported `Unavailable` (expected path + where to get the file) and the others are still computed.
Images are uint8 RGB arrays `img_HW3` (the saved PNGs, exactly); deep metrics see float `x_B3HW` in [0, 1].
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import math
import os
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nsarm.compat import ensure_torchvision_importable

_HF = "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/"


@dataclass(frozen=True)
class WeightFile:
    """One pretrained file a metric needs, by its upstream file name (the name pyiqa/torchvision cache it under)."""

    filename: str
    url: str  # where a user can obtain it by hand; this code never fetches it


@dataclass(frozen=True)
class MetricSpec:
    """A metric pinned to one variant; `higher_better` says which way is good (NIQE and LPIPS: lower)."""

    name: str  # column name in every table
    mode: str  # "FR" (needs the HR reference) or "NR"
    higher_better: bool
    variant: str  # the exact library call, for reports and MLflow params
    weights: tuple[WeightFile, ...] = ()


SPECS: dict[str, MetricSpec] = {
    s.name: s
    for s in (
        MetricSpec("psnr", "FR", True, "basicsr.calculate_psnr, Y of BT.601 YCbCr (16-235)"),
        MetricSpec("ssim", "FR", True, "pyiqa 'ssim', Y of YIQ rounded, 11x11 Gaussian sigma 1.5, cs map >= 0"),
        MetricSpec("lpips", "FR", False, "lpips.LPIPS(net='alex', version='0.1'), RGB in [-1, 1]",
                   (WeightFile("alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),)),
        MetricSpec("niqe", "NR", False, "pyiqa 'niqe', Y of YIQ, MATLAB pristine model (BasicSR's copy)"),
        MetricSpec("clipiqa", "NR", True, "pyiqa 'clipiqa' (CLIP RN50, prompt ensemble)",
                   (WeightFile("RN50.pt", "https://openaipublic.azureedge.net/clip/models/"
                               "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt"),)),
        MetricSpec("musiq", "NR", True, "pyiqa 'musiq' (KonIQ-10k checkpoint, 0-100)",
                   (WeightFile("musiq_koniq_ckpt-e95806b9.pth", _HF + "musiq_koniq_ckpt-e95806b9.pth"),)),
        MetricSpec("maniqa", "NR", True, "pyiqa 'maniqa-pipal' (PIPAL checkpoint)",
                   (WeightFile("MANIQA_PIPAL-ae6d356b.pth", _HF + "MANIQA_PIPAL-ae6d356b.pth"),)),
        MetricSpec("topiq", "NR", True, "pyiqa 'topiq_nr' (CFANet ResNet-50, KonIQ checkpoint)",
                   (WeightFile("cfanet_nr_koniq_res50-9a73138b.pth", _HF + "cfanet_nr_koniq_res50-9a73138b.pth"),)),
    )
}
PAPER_METRICS = tuple(SPECS)  # Table 1's column order
PROTOCOLS = ("pyiqa", "basicsr")  # MetricConfig.protocol choices; the first is the default
# The variants of the "basicsr" protocol; every other metric is the same under both protocols.
BASICSR_VARIANTS = {
    "ssim": "basicsr.calculate_ssim, Y of BT.601 YCbCr, 11x11 Gaussian sigma 1.5",
    "niqe": "basicsr.calculate_niqe(convert_to='y'), Y of BT.601 YCbCr, MATLAB pristine model",
}
_PYIQA_NAMES = {"clipiqa": "clipiqa", "musiq": "musiq", "maniqa": "maniqa-pipal", "topiq": "topiq_nr"}
_PYIQA_PIN = "pyiqa==0.1.16 (install with --no-deps, plus facexlib==0.3.0 --no-deps)"


def default_weights_dir() -> Path:
    """`$NSARM_IQA_WEIGHTS`, else `~/.cache/nsarm/iqa`: the one folder holding every metric's pretrained files."""
    return Path(os.environ.get("NSARM_IQA_WEIGHTS") or Path.home() / ".cache" / "nsarm" / "iqa")


@dataclass(frozen=True)
class MetricConfig:
    """What to score and how; saved beside every evaluation (one config saved with its output, as for every stage)."""

    metrics: tuple[str, ...] = PAPER_METRICS  # subset of SPECS, in report order
    crop_border: int = 0  # pixels cut from each edge for PSNR/SSIM/NIQE only; the peers' pyiqa scripts crop nothing
    weights_dir: str | None = None  # None -> default_weights_dir()
    device: str = "cpu"  # torch device for the deep metrics
    protocol: str = "pyiqa"  # SSIM/NIQE implementation, one of PROTOCOLS: "pyiqa" (paper-comparable) or "basicsr"


def variant(metric: str, protocol: str = PROTOCOLS[0]) -> str:
    """The exact library call behind `metric` under `protocol` (for reports and MLflow params)."""
    if protocol == "basicsr" and metric in BASICSR_VARIANTS:
        return BASICSR_VARIANTS[metric]
    return SPECS[metric].variant


@dataclass(frozen=True)
class Unavailable:
    """Why a metric could not be computed, where its files were expected and how to get them."""

    metric: str
    reason: str
    expected: tuple[str, ...] = ()
    how_to_obtain: str = ""

    def message(self) -> str:
        where = f" expected at {', '.join(self.expected)}" if self.expected else ""
        return f"{self.metric}: unavailable ({self.reason}){where}. {self.how_to_obtain}".strip()


# ------------------------------------------------------------------------------------------------ image helpers
def as_rgb_uint8(img: np.ndarray, name: str = "image") -> np.ndarray:
    """Return `img` as a contiguous uint8 (H, W, 3) RGB array; grey (H, W) / (H, W, 1) is repeated to 3 channels."""
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
        raise TypeError(f"{name}: expected a uint8 numpy array, got {type(img).__name__} {getattr(img, 'dtype', '')}")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise ValueError(f"{name}: expected shape (H, W[, 1|3|4]), got {img.shape}")
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


def _to_tensor(img_HW3: np.ndarray, device: str):
    import torch

    # uint8 crosses to the device first (4x less traffic than float32), then becomes (1, 3, H, W) in [0, 1]
    return torch.from_numpy(img_HW3).to(device).permute(2, 0, 1)[None].float().div_(255.0)


# ------------------------------------------------------------------------------------------------ scorers
# A scorer maps (sr_HW3, hr_HW3 or None) -> float. The suite builds each once (heavy state loads here).
Scorer = Callable[[np.ndarray, "np.ndarray | None"], float]


def _psnr_scorer(crop_border: int) -> Scorer:
    ensure_torchvision_importable()
    from basicsr.metrics.psnr_ssim import calculate_psnr

    # BasicSR expects BGR [0, 255]; [..., ::-1] hands it the channel order its Y formula assumes.
    return lambda sr, hr: float(calculate_psnr(sr[..., ::-1], hr[..., ::-1], crop_border, test_y_channel=True))


def _basicsr_ssim_scorer(crop_border: int) -> Scorer:
    ensure_torchvision_importable()
    from basicsr.metrics.psnr_ssim import calculate_ssim

    return lambda sr, hr: float(calculate_ssim(sr[..., ::-1], hr[..., ::-1], crop_border, test_y_channel=True))


def _pyiqa_ssim_scorer(crop_border: int, device: str) -> Scorer:
    import torch

    ensure_torchvision_importable()
    _ensure_pkg_resources()
    import pyiqa

    net = pyiqa.create_metric("ssim", device=torch.device(device), crop_border=crop_border)

    def score(sr, hr):
        with torch.inference_mode():
            return float(net(_to_tensor(sr, device), _to_tensor(hr, device)).flatten()[0].item())

    return score


NIQE_MIN_SIDE = 96  # NIQE works on 96x96 blocks (and their half-scale copies); smaller images have none


def _check_niqe_size(sr: np.ndarray, crop_border: int) -> None:
    h, w = (d - 2 * crop_border for d in sr.shape[:2])
    if (h // NIQE_MIN_SIDE) * (w // NIQE_MIN_SIDE) < 2:  # one block gives a singular covariance
        raise ValueError(f"NIQE needs two {NIQE_MIN_SIDE}x{NIQE_MIN_SIDE} blocks (e.g. 192x96 px) after "
                         f"crop_border={crop_border}, got {sr.shape[1]}x{sr.shape[0]}")


def _basicsr_niqe_scorer(crop_border: int) -> Scorer:
    ensure_torchvision_importable()
    from basicsr.metrics.niqe import calculate_niqe

    def score(sr, hr):
        _check_niqe_size(sr, crop_border)
        try:
            return float(calculate_niqe(sr[..., ::-1], crop_border, input_order="HWC", convert_to="y"))
        except np.linalg.LinAlgError:
            # A flat image (e.g. a collapsed output) has no natural-scene statistics: its feature covariance is
            # singular. NaN keeps the image in the table instead of aborting the whole set.
            return math.nan

    return score


def niqe_params_mat() -> io.BytesIO:
    """NIQE's MATLAB pristine model (`modelparameters.mat` of the LIVE release) as an in-memory .mat for pyiqa.

    pyiqa downloads `niqe_modelparameters.mat` at first use; BasicSR ships the same two arrays as
    `basicsr/metrics/niqe_pris_params.npz` (mu 1x36, cov 36x36). Re-packed under pyiqa's key names they
    reproduce MATLAB's published NIQE to 1e-5 (benchmarks/RESULTS.md, "NIQE parameters"), so nothing is fetched.
    """
    ensure_torchvision_importable()
    import basicsr
    import scipy.io

    npz = np.load(Path(basicsr.__file__).parent / "metrics" / "niqe_pris_params.npz")
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"mu_prisparam": npz["mu_pris_param"], "cov_prisparam": npz["cov_pris_param"]})
    buf.seek(0)
    return buf


def _pyiqa_niqe_scorer(crop_border: int, device: str) -> Scorer:
    import torch

    ensure_torchvision_importable()
    _ensure_pkg_resources()
    import pyiqa

    # scipy.io.loadmat (what pyiqa's NIQE calls on this path) reads file objects as well as paths
    net = pyiqa.create_metric("niqe", device=torch.device(device), crop_border=crop_border,
                              pretrained_model_path=niqe_params_mat())

    def score(sr, hr):
        _check_niqe_size(sr, crop_border)
        try:
            with torch.inference_mode():
                return float(net(_to_tensor(sr, device)).flatten()[0].item())
        except torch.linalg.LinAlgError:  # a flat image: non-finite block features (as in the BasicSR scorer)
            return math.nan

    return score


def _lpips_scorer(weights_dir: Path, device: str) -> Scorer:
    ensure_torchvision_importable()
    import lpips
    import torch

    # pnet_rand=True: build AlexNet without torchvision's download, then fill it from the local file below.
    net = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    load_alexnet_features(net, weights_dir / SPECS["lpips"].weights[0].filename)
    net = net.to(device).eval()

    def score(sr, hr):
        with torch.inference_mode():
            return float(net(_to_tensor(sr, device), _to_tensor(hr, device), normalize=True).item())

    return score


def load_alexnet_features(net, path: Path) -> None:
    """Copy torchvision AlexNet `features.{i}.*` weights into lpips' sliced backbone (`net.slice{k}.{i}.*`)."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    backbone = net.net
    mapped = {}
    for k in range(1, backbone.N_slices + 1):
        for idx, _module in getattr(backbone, f"slice{k}").named_children():
            for pname in ("weight", "bias"):
                src = f"features.{idx}.{pname}"
                if src in state:
                    mapped[f"slice{k}.{idx}.{pname}"] = state[src]
    missing, unexpected = backbone.load_state_dict(mapped, strict=False)
    if missing:
        raise ValueError(f"{path}: not a torchvision AlexNet state dict (missing {missing[:3]} ...)")


def _ensure_pkg_resources() -> None:
    """openai-clip (imported by pyiqa) does `from pkg_resources import packaging`, gone from setuptools >= 81.

    It only uses `packaging.version`; a minimal stand-in module restores the import. Called lazily, idempotent.
    """
    if "pkg_resources" in sys.modules or importlib.util.find_spec("pkg_resources") is not None:
        return
    import packaging.version  # noqa: F401  (loads the submodule clip reads as packaging.version)

    shim = types.ModuleType("pkg_resources")
    shim.packaging = sys.modules["packaging"]  # type: ignore[attr-defined]
    sys.modules["pkg_resources"] = shim


@contextlib.contextmanager
def offline_pyiqa(weights_dir: Path):
    """Inside: pyiqa's weight cache is `weights_dir`, any download raises, timm backbones are built empty.

    Forcing timm's `pretrained=False` is safe for MANIQA/TOPIQ: their pyiqa checkpoints hold the whole network
    (loaded with strict=True), so the ImageNet backbone download would only be overwritten.
    """
    ensure_torchvision_importable()
    _ensure_pkg_resources()
    import pyiqa.utils.download_util as du
    import timm

    def refuse(url, *args, **kwargs):
        raise FileNotFoundError(f"weights missing and downloads are disabled: {url}")

    create = timm.create_model
    saved = (du.DEFAULT_CACHE_DIR, du.download_url_to_file)
    du.DEFAULT_CACHE_DIR, du.download_url_to_file = str(weights_dir), refuse
    timm.create_model = lambda name, pretrained=False, **kw: create(name, pretrained=False, **kw)
    try:
        yield
    finally:
        du.DEFAULT_CACHE_DIR, du.download_url_to_file = saved
        timm.create_model = create


def _pyiqa_scorer(metric: str, weights_dir: Path, device: str) -> Scorer:
    import torch

    ensure_torchvision_importable()
    _ensure_pkg_resources()
    import pyiqa

    kwargs = {}
    if metric == "clipiqa":  # pyiqa's CLIP loader accepts a file path in place of the model name
        kwargs["backbone"] = str(weights_dir / SPECS["clipiqa"].weights[0].filename)
    with offline_pyiqa(weights_dir):
        net = pyiqa.create_metric(_PYIQA_NAMES[metric], device=torch.device(device), **kwargs)

    def score(sr, hr):
        with torch.inference_mode():
            return float(net(_to_tensor(sr, device)).flatten()[0].item())

    return score


# ------------------------------------------------------------------------------------------------ the suite
def missing_weights(metric: str, weights_dir: Path) -> list[Path]:
    """The files `metric` needs that are absent from `weights_dir`."""
    return [weights_dir / w.filename for w in SPECS[metric].weights if not (weights_dir / w.filename).is_file()]


def _uses_pyiqa(metric: str, protocol: str) -> bool:
    return metric in _PYIQA_NAMES or (metric in BASICSR_VARIANTS and protocol != "basicsr")


def _unavailable_for(metric: str, weights_dir: Path, protocol: str) -> Unavailable | None:
    """Why `metric` cannot be built here (library missing and/or weight files missing), or None."""
    spec = SPECS[metric]
    reasons, steps = [], []
    if _uses_pyiqa(metric, protocol) and importlib.util.find_spec("pyiqa") is None:
        reasons.append("pyiqa is not installed")
        steps.append(f"pip install {_PYIQA_PIN}.")
    if metric == "lpips" and importlib.util.find_spec("lpips") is None:
        reasons.append("lpips is not installed")
        steps.append("pip install lpips==0.1.4.")
    missing = missing_weights(metric, weights_dir)
    if missing:
        reasons.append("pretrained weights not found")
        urls = "; ".join(w.url for w in spec.weights if weights_dir / w.filename in missing)
        steps.append(f"Download {urls} into {weights_dir} (or set NSARM_IQA_WEIGHTS).")
    if not reasons:
        return None
    return Unavailable(metric, "; ".join(reasons), tuple(str(p) for p in missing), " ".join(steps))


@dataclass
class MetricSuite:
    """Builds every requested, available metric once and scores image pairs with them.

    Usage:
        suite = MetricSuite(MetricConfig(weights_dir="/models/iqa"))
        row = suite.score(sr_HW3, hr_HW3)   # {"psnr": ..., "clipiqa": ..., ...}; NaN for FR metrics without HR
        suite.unavailable                    # {"maniqa": Unavailable(...)} for metrics that could not be built
        suite.variants                       # {"ssim": "pyiqa 'ssim', ...", ...}: what each column is
    """

    cfg: MetricConfig = field(default_factory=MetricConfig)
    scorers: dict[str, Scorer] = field(init=False, default_factory=dict)
    unavailable: dict[str, Unavailable] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [m for m in self.cfg.metrics if m not in SPECS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; choose from {list(SPECS)}")
        if self.cfg.protocol not in PROTOCOLS:
            raise ValueError(f"unknown metric protocol {self.cfg.protocol!r}; choose from {list(PROTOCOLS)}")
        if self.cfg.crop_border < 0:
            raise ValueError(f"crop_border must be >= 0, got {self.cfg.crop_border}")
        weights_dir = Path(self.cfg.weights_dir) if self.cfg.weights_dir else default_weights_dir()
        for metric in self.cfg.metrics:
            why = _unavailable_for(metric, weights_dir, self.cfg.protocol)
            if why is None:
                try:
                    self.scorers[metric] = self._build(metric, weights_dir)
                except Exception as e:  # a corrupt or mismatched weight file must not stop the other metrics
                    why = Unavailable(metric, f"failed to build: {type(e).__name__}: {e}",
                                      tuple(str(weights_dir / w.filename) for w in SPECS[metric].weights))
            if why is not None:
                self.unavailable[metric] = why

    def _build(self, metric: str, weights_dir: Path) -> Scorer:
        border, device = self.cfg.crop_border, self.cfg.device
        if metric == "psnr":
            return _psnr_scorer(border)
        basicsr = self.cfg.protocol == "basicsr"
        if metric == "ssim":
            return _basicsr_ssim_scorer(border) if basicsr else _pyiqa_ssim_scorer(border, device)
        if metric == "niqe":
            return _basicsr_niqe_scorer(border) if basicsr else _pyiqa_niqe_scorer(border, device)
        if metric == "lpips":
            return _lpips_scorer(weights_dir, device)
        return _pyiqa_scorer(metric, weights_dir, device)

    @property
    def variants(self) -> dict[str, str]:
        """{metric: the exact library call} for every requested metric, under this suite's protocol."""
        return {m: variant(m, self.cfg.protocol) for m in self.cfg.metrics}

    @property
    def available(self) -> tuple[str, ...]:
        return tuple(m for m in self.cfg.metrics if m in self.scorers)

    def score(self, sr: np.ndarray, hr: np.ndarray | None = None) -> dict[str, float]:
        """Score one SR image (uint8 RGB HxWx3) against its HR (same shape) if given.

        Returns:
            {metric: value} for every available metric; full-reference metrics are NaN when `hr` is None.
        """
        sr = as_rgb_uint8(sr, "sr")
        if hr is not None:
            hr = as_rgb_uint8(hr, "hr")
            if hr.shape != sr.shape:
                raise ValueError(f"sr shape {sr.shape} != hr shape {hr.shape}; resize SR to the HR size first")
        border = self.cfg.crop_border
        if border and min(sr.shape[:2]) <= 2 * border + 10:
            raise ValueError(f"image {sr.shape[:2]} too small for crop_border={border}")
        row: dict[str, float] = {}
        for metric, scorer in self.scorers.items():
            if SPECS[metric].mode == "FR" and hr is None:
                row[metric] = math.nan
            else:  # BasicSR crops the border itself; the deep metrics see the whole image, as in the peers' scripts
                row[metric] = scorer(sr, hr)
        return row
