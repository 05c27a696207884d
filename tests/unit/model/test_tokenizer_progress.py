"""The tokenizer warm-up logs its progress (issue 21.2): a line every `log_every` steps and a last one when the
time budget stops it early, even before `log_every` steps (the demo's warm-up on a loaded machine)."""

import logging

from nsarm.tokenizer_train import TokenizerTrainConfig, load_photos, train_tokenizer


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "nsarm.tokenizer_train"]


def test_progress_every_log_every_steps(sample_photos, caplog):
    photos = load_photos(sample_photos[0].path.parent)[:2]
    with caplog.at_level(logging.INFO, logger="nsarm.tokenizer_train"):
        train_tokenizer(TokenizerTrainConfig(steps=3, batch_size=2, log_every=2, device="cpu"), photos)
    lines = _lines(caplog)
    assert [line.split(" | ")[0] for line in lines] == ["tokenizer warm-up: 2/3 steps (67%)",
                                                        "tokenizer warm-up: 3/3 steps (100%)"]
    assert "loss " in lines[0] and "samples/s" in lines[0] and "ETA" in lines[0] and lines[1].endswith("done")


def test_a_spent_time_budget_logs_where_it_stopped(sample_photos, caplog):
    photos = load_photos(sample_photos[0].path.parent)[:2]
    with caplog.at_level(logging.INFO, logger="nsarm.tokenizer_train"):
        _, stats = train_tokenizer(TokenizerTrainConfig(steps=50, batch_size=2, log_every=25, max_seconds=0.0,
                                                        device="cpu"), photos)
    assert stats["steps"] == 1
    assert _lines(caplog)[-1].startswith("tokenizer warm-up: 1/50 steps (2%)") and "time budget spent" in \
        _lines(caplog)[-1]
