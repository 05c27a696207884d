"""Blur kernels of Real-ESRGAN: (an)isotropic Gaussian, generalised Gaussian, plateau, circular low-pass (sinc).

Pure numpy, float64, no I/O and no global RNG: samplers take a `numpy.random.Generator` (one per sample, seeded
from the sample key) and return a JSON-able parameter dict; `kernel_from_params` turns such a dict back into the
kernel, so a recorded degradation can be replayed. The maths follows the formulas of BasicSR's
`basicsr/data/degradations.py` (covariance Σ = R diag(σx², σy²) Rᵀ; generalised Gaussian exp(-½ (xᵀΣ⁻¹x)^β);
plateau 1/(1+(xᵀΣ⁻¹x)^β); sinc ω J1(ω r)/(2π r)), written independently and checked against it in the tests.
Shapes: K kernel size (odd), kernels are (K, K) and sum to 1.
"""

from __future__ import annotations

import numpy as np
from scipy import special


def mesh_grid(kernel_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer coordinates centred on 0: (xx, yy), each (K, K); xx varies along columns."""
    ax = np.arange(kernel_size, dtype=np.float64) - (kernel_size - 1) / 2
    xx, yy = np.meshgrid(ax, ax)
    return xx, yy


def sigma_matrix(sig_x: float, sig_y: float, theta: float) -> np.ndarray:
    """2×2 covariance of a Gaussian with axes σx, σy rotated by θ radians."""
    c, s = np.cos(theta), np.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    return rot @ np.diag([sig_x**2, sig_y**2]) @ rot.T


def _mahalanobis_sq(kernel_size: int, sig_x: float, sig_y: float, theta: float, isotropic: bool) -> np.ndarray:
    """xᵀ Σ⁻¹ x on the kernel grid, (K, K)."""
    xx, yy = mesh_grid(kernel_size)
    cov = np.diag([sig_x**2, sig_x**2]) if isotropic else sigma_matrix(sig_x, sig_y, theta)
    inv = np.linalg.inv(cov)
    return inv[0, 0] * xx * xx + (inv[0, 1] + inv[1, 0]) * xx * yy + inv[1, 1] * yy * yy


def gaussian_kernel(kernel_size: int, sig_x: float, sig_y: float, theta: float, isotropic: bool) -> np.ndarray:
    """Bivariate Gaussian; isotropic uses only σx."""
    k = np.exp(-0.5 * _mahalanobis_sq(kernel_size, sig_x, sig_y, theta, isotropic))
    return k / k.sum()


def generalized_gaussian_kernel(kernel_size: int, sig_x: float, sig_y: float, theta: float, beta: float,
                                isotropic: bool) -> np.ndarray:
    """exp(-½ (xᵀΣ⁻¹x)^β): β=1 is the Gaussian, β<1 heavier tails, β>1 flatter top."""
    k = np.exp(-0.5 * np.power(_mahalanobis_sq(kernel_size, sig_x, sig_y, theta, isotropic), beta))
    return k / k.sum()


def plateau_kernel(kernel_size: int, sig_x: float, sig_y: float, theta: float, beta: float,
                   isotropic: bool) -> np.ndarray:
    """1 / (1 + (xᵀΣ⁻¹x)^β): a flat-topped kernel."""
    k = np.reciprocal(np.power(_mahalanobis_sq(kernel_size, sig_x, sig_y, theta, isotropic), beta) + 1)
    return k / k.sum()


def circular_lowpass_kernel(omega_c: float, kernel_size: int, pad_to: int = 0) -> np.ndarray:
    """Ideal circular low-pass filter (2-D sinc) with cutoff ω_c in radians (π = Nyquist), normalised to sum 1,
    zero-padded to `pad_to` when that is larger. The centre takes the r→0 limit ω²/(4π)."""
    if kernel_size % 2 != 1:
        raise ValueError(f"sinc kernel size must be odd, got {kernel_size}")
    xx, yy = mesh_grid(kernel_size)
    r = np.sqrt(xx * xx + yy * yy)
    safe_r = np.where(r == 0, 1.0, r)  # avoid 0/0 at the centre; it is overwritten below
    k = omega_c * special.j1(omega_c * safe_r) / (2 * np.pi * safe_r)
    c = (kernel_size - 1) // 2
    k[c, c] = omega_c**2 / (4 * np.pi)
    k = k / k.sum()
    return pad_kernel(k, pad_to)


def pad_kernel(kernel: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad a (K, K) kernel symmetrically to (size, size); unchanged when size <= K."""
    pad = (size - kernel.shape[0]) // 2
    return np.pad(kernel, ((pad, pad), (pad, pad))) if pad > 0 else kernel


def pulse_kernel(size: int) -> np.ndarray:
    """Identity kernel (a single 1 in the centre)."""
    k = np.zeros((size, size))
    k[size // 2, size // 2] = 1.0
    return k


def _beta(rng: np.random.Generator, beta_range: tuple[float, float]) -> float:
    # Real-ESRGAN draws β below or above 1 with probability 1/2 each (assumes beta_range[0] <= 1 <= beta_range[1]).
    if rng.uniform() < 0.5:
        return float(rng.uniform(beta_range[0], 1.0))
    return float(rng.uniform(1.0, beta_range[1]))


def sample_blur_params(rng: np.random.Generator, kernel_range, kernel_list, kernel_prob, sinc_prob: float,
                       sigma_range: tuple[float, float], betag_range, betap_range) -> dict:
    """One first- or second-order blur kernel, as Real-ESRGAN's dataset draws it.

    Returns a JSON-able dict: {"type", "size", ...shape parameters}. With probability `sinc_prob` a sinc kernel with
    ω_c ~ U(π/3, π) (size < 13) or U(π/5, π) (size >= 13); otherwise one of `kernel_list` with `kernel_prob`:
    σx (and σy, θ ~ U(-π, π) for anisotropic types) ~ U(sigma_range), β from betag/betap_range.
    """
    size = int(rng.choice(np.asarray(kernel_range)))
    if rng.uniform() < sinc_prob:
        low = np.pi / 3 if size < 13 else np.pi / 5
        return {"type": "sinc", "size": size, "omega_c": float(rng.uniform(low, np.pi))}
    prob = np.asarray(kernel_prob, dtype=np.float64)
    ktype = str(kernel_list[int(rng.choice(len(kernel_list), p=prob / prob.sum()))])
    sig_x = float(rng.uniform(*sigma_range))
    params = {"type": ktype, "size": size, "sigma_x": sig_x, "sigma_y": sig_x, "theta": 0.0}
    if ktype.endswith("aniso"):
        params["sigma_y"] = float(rng.uniform(*sigma_range))
        params["theta"] = float(rng.uniform(-np.pi, np.pi))
    if ktype.startswith("generalized"):
        params["beta"] = _beta(rng, betag_range)
    elif ktype.startswith("plateau"):
        params["beta"] = _beta(rng, betap_range)
    return params


def sample_final_sinc_params(rng: np.random.Generator, prob: float, kernel_range,
                             omega_range: tuple[float, float]) -> dict | None:
    """The final sinc filter: with probability `prob` a sinc of random size and ω_c ~ U(omega_range), else None
    (Real-ESRGAN then convolves with a pulse, i.e. leaves the image unchanged)."""
    if rng.uniform() >= prob:
        return None
    size = int(rng.choice(np.asarray(kernel_range)))
    return {"type": "sinc", "size": size, "omega_c": float(rng.uniform(*omega_range))}


def kernel_from_params(params: dict | None, pad_to: int = 21) -> np.ndarray:
    """Rebuild the (pad_to, pad_to) float64 kernel of a parameter dict from the samplers (None → pulse)."""
    if params is None:
        return pulse_kernel(pad_to)
    t, size = params["type"], int(params["size"])
    if t == "sinc":
        return circular_lowpass_kernel(params["omega_c"], size, pad_to)
    if t not in ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"):
        raise ValueError(f"unknown kernel type {t!r} in {params}")
    iso = not t.endswith("aniso")
    sx, sy, th = params["sigma_x"], params["sigma_y"], params["theta"]
    if t in ("iso", "aniso"):
        k = gaussian_kernel(size, sx, sy, th, iso)
    elif t.startswith("generalized"):
        k = generalized_gaussian_kernel(size, sx, sy, th, params["beta"], iso)
    else:
        k = plateau_kernel(size, sx, sy, th, params["beta"], iso)
    return pad_kernel(k, pad_to)


def cv2_gaussian_1d(ksize: int, sigma: float = 0.0) -> np.ndarray:
    """OpenCV's `getGaussianKernel` for ksize > 7 (float64, sums to 1); sigma <= 0 uses OpenCV's rule
    0.3·((ksize-1)/2 - 1) + 0.8. USM sharpening uses the outer product of this with itself."""
    if sigma <= 0:
        sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8
    x = np.arange(ksize, dtype=np.float64) - (ksize - 1) / 2
    g = np.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()
