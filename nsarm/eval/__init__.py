"""Evaluation: the paper's metric suite, robustness counts and curves, test-set loaders, reports, `nsarm eval`.

`metrics` (what each number is), `robustness` (Fig. 4 / Eq. 7), `testsets` (RealSR, DRealSR, RP60, synthetic),
`evaluate` (score a folder or an upscale function), `report` (tables, parquet, plots), `holdout` (a dataset's
held-out split and the tokenizer's ceiling, the train-nsarm flow's evaluate step). MLflow lives in
`nsarm/tracking.py` only.
"""
