"""NSARM training: stage-1/2 losses and the StageModule DDP/FSDP wrap (steps.py), the per-worker loop (loop.py),
Ray Train (ray_trainer.py, the only Ray code), the stage's MLflow run, registered versions and `champion`
(registry.py), checkpoint state (state.py), export (export.py), presets (config.py), the tiny tokenizer warm-up
(holdout.py). Models are loaded by nsarm/loading.py; the held-out evaluation is nsarm/eval/holdout.py. Importing
this package is free of side effects; Ray and MLflow are imported only inside the functions that need them."""
