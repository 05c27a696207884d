"""NSARM training: stage-1/2 losses (steps.py), the per-worker loop (loop.py), Ray Train (ray_trainer.py, the only
Ray code), checkpoint state (state.py), export (export.py), presets (config.py). Importing this package is free of
side effects; Ray and MLflow are imported only inside the functions that need them."""
