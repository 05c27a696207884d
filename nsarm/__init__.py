"""NSARM model library: tokenizer (BSQ-VAE), scales, Infinity transformer, transformation net, inference, training.

Pure PyTorch: Prefect is never imported here, Ray only in `nsarm/train/ray_trainer.py`, MLflow only in
`nsarm/tracking.py`.
"""

from nsarm.compat import ensure_torchvision_importable

# The one import-time action of the project's packages: make torchvision (and with it basicsr and transformers'
# LLaVA processor) importable on the CPU-only torch build. It only declares two operator schemas when they are
# missing; see nsarm/compat.py for why it must run before any torchvision import in every process (Ray workers too).
ensure_torchvision_importable()

__version__ = "0.1.0"
