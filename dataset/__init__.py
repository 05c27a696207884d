"""dataset library (see docs/DESIGN.md §2). Imports nsarm first so the torchvision shim (nsarm/compat.py) is in place."""

import nsarm  # noqa: F401  (side effect: nsarm.compat.ensure_torchvision_importable)
