"""NSARM model library: tokenizer (BSQ-VAE), scales, Infinity transformer, transformation net, inference, training.

Pure PyTorch: Prefect is never imported here, Ray only in `nsarm/train/ray_trainer.py`, MLflow only in
`nsarm/tracking.py`.
Importing it does nothing else: the torchvision shim (nsarm/compat.py, which imports torch) is called by the
functions that import torchvision, BasicSR, pyiqa, lpips, timm or transformers' models, right before they do.
"""

__version__ = "0.1.0"
