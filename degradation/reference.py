"""The reference: Real-ESRGAN's `feed_data` degradation chain built from BasicSR's own functions, one image at a time,
driven by OUR recorded parameter dict. Used by the equivalence tests and by `benchmarks/degradation.py`.

It calls `basicsr.utils.img_process_util.{USMSharp, filter2D}`, `basicsr.data.degradations.{add_gaussian_noise_pt,
add_poisson_noise_pt, circular_lowpass_kernel}` and `basicsr.utils.DiffJPEG(differentiable=False)` in the order of
xinntao/Real-ESRGAN `realesrgan/models/realesrgan_model.py`; noise draws come from the global torch RNG seeded with
the recorded noise seed (the same stream as our per-sample `torch.Generator`). basicsr is imported lazily: it is a
test/benchmark dependency (installed with --no-deps, see pyproject.toml), not needed to build a dataset.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from degradation.kernels import kernel_from_params
from nsarm.compat import ensure_torchvision_importable


class BasicSRChain:
    """Holds BasicSR's stateful modules (DiffJPEG tables, USM kernel) once; call per image."""

    def __init__(self, usm_radius: int = 50):
        ensure_torchvision_importable()
        from basicsr.utils import DiffJPEG
        from basicsr.utils.img_process_util import USMSharp

        self.jpeger = DiffJPEG(differentiable=False)
        self.usm = USMSharp(radius=usm_radius)

    def to(self, device) -> BasicSRChain:
        self.jpeger, self.usm = self.jpeger.to(device), self.usm.to(device)
        return self

    def _noise(self, x: torch.Tensor, p: dict) -> torch.Tensor:
        ensure_torchvision_importable()
        from basicsr.data.degradations import add_gaussian_noise_pt, add_poisson_noise_pt

        torch.manual_seed(p["seed"])
        gray = torch.tensor([1.0 if p["gray"] else 0.0], device=x.device)
        if p["kind"] == "gaussian":
            sigma = torch.tensor([p["sigma"]], device=x.device)
            return add_gaussian_noise_pt(x, sigma=sigma, gray_noise=gray, clip=True, rounds=False)
        scale = torch.tensor([p["scale"]], device=x.device)
        return add_poisson_noise_pt(x, scale=scale, gray_noise=gray, clip=True, rounds=False)

    def _jpeg(self, x: torch.Tensor, quality: float) -> torch.Tensor:
        # DiffJPEG returns a channels-last-strided tensor on which filter2D fails: make it contiguous.
        return self.jpeger(torch.clamp(x, 0, 1), quality=torch.tensor([quality], dtype=torch.float32, device=x.device)).contiguous()

    @torch.no_grad()
    def __call__(self, hr_13HW: torch.Tensor, params: dict) -> torch.Tensor:
        """One float [0, 1] HR image (1, 3, H, W) → uint8 LR (1, 3, H/scale, W/scale)."""
        ensure_torchvision_importable()
        from basicsr.utils.img_process_util import filter2D

        def k(p):
            return torch.FloatTensor(kernel_from_params(p, params["kernel_pad"])).unsqueeze(0).to(hr_13HW.device)

        ori_h, ori_w = hr_13HW.shape[-2:]
        scale = params["scale"]
        out = self.usm(hr_13HW) if params["usm"] is not None else hr_13HW
        out = filter2D(out, k(params["blur1"]))
        out = F.interpolate(out, scale_factor=params["resize1"]["scale"], mode=params["resize1"]["mode"])
        out = self._noise(out, params["noise1"])
        if params["jpeg1"] is not None:  # add_deg.py's 'light' branch comments JPEG1 and the second order out
            out = self._jpeg(out, params["jpeg1"])
        if params["resize2"] is not None:
            if params["blur2"] is not None:
                out = filter2D(out, k(params["blur2"]))
            r2 = params["resize2"]
            out = F.interpolate(out, size=(int(ori_h / scale * r2["scale"]), int(ori_w / scale * r2["scale"])),
                                mode=r2["mode"])
            out = self._noise(out, params["noise2"])
        fin = params["final"]
        if fin["resize_back_first"]:
            out = F.interpolate(out, size=(ori_h // scale, ori_w // scale), mode=fin["mode"])
            out = filter2D(out, k(fin["sinc"]))
            out = self._jpeg(out, fin["jpeg"])
        else:
            out = self._jpeg(out, fin["jpeg"])
            out = F.interpolate(out, size=(ori_h // scale, ori_w // scale), mode=fin["mode"])
            out = filter2D(out, k(fin["sinc"]))
        return torch.clamp((out * 255.0).round(), 0, 255).to(torch.uint8)
