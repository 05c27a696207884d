"""One preset resolver, one `from_dict`, one config hash for every stage's config (issue 18.5): the same error for
an unknown preset or field everywhere, JSON round trips (tuples, nested configs), and the module's promises."""

from __future__ import annotations

import ast
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

from captioning.config import PRESETS as CAPTION_PRESETS
from captioning.config import CaptionConfig, caption_config
from dataset import configs
from dataset.config import PRESETS as SHARD_PRESETS
from dataset.config import ShardConfig, shard_config
from degradation.config import PRESETS as DEG_PRESETS
from degradation.config import DegradationConfig, degradation_config
from nsarm.config import TOKENIZER_PRESETS, TokenizerConfig, tokenizer_config
from nsarm.model import MODEL_PRESETS, ModelConfig, model_config
from nsarm.train.config import TRAIN_PRESETS, TrainConfig, train_preset

REPO = Path(__file__).resolve().parents[2]
RESOLVERS = [  # (kind, resolver, its table)
    ("shard", shard_config, SHARD_PRESETS),
    ("degradation", degradation_config, DEG_PRESETS),
    ("caption", caption_config, CAPTION_PRESETS),
    ("training", train_preset, TRAIN_PRESETS),
    ("tokenizer", tokenizer_config, TOKENIZER_PRESETS),
    ("model", model_config, MODEL_PRESETS),
]
CONFIGS = [(ShardConfig, SHARD_PRESETS), (DegradationConfig, DEG_PRESETS), (CaptionConfig, CAPTION_PRESETS),
           (TokenizerConfig, TOKENIZER_PRESETS), (ModelConfig, MODEL_PRESETS),
           (TrainConfig, {f"{k}/{s}": getattr(v, f"stage{s}") for k, v in TRAIN_PRESETS.items() for s in (1, 2)})]


@pytest.mark.parametrize("kind, resolve, table", RESOLVERS, ids=[r[0] for r in RESOLVERS])
def test_an_unknown_preset_is_one_line_naming_kind_name_and_choices(kind, resolve, table):
    with pytest.raises(ValueError) as err:
        resolve("nope")
    assert str(err.value) == f"unknown {kind} preset 'nope'; choose from {sorted(table)}"
    name = sorted(table)[-1]
    assert resolve(name) == table[name]


@pytest.mark.parametrize("cls, table", CONFIGS, ids=[c[0].__name__ for c in CONFIGS])
def test_every_preset_round_trips_through_json(cls, table):
    """asdict → JSON → from_dict gives the config back: tuples (JSON lists), nested part configs, `None`."""
    for name, cfg in table.items():
        assert cls.from_dict(json.loads(json.dumps(asdict(cfg)))) == cfg, name


@pytest.mark.parametrize("cls, table", CONFIGS, ids=[c[0].__name__ for c in CONFIGS])
def test_an_unknown_field_is_named_the_same_way_everywhere(cls, table):
    cfg = next(iter(table.values()))
    with pytest.raises(ValueError, match=rf"^unknown {cls.__name__} field\(s\) \['colour'\]; valid: \["):
        cls.from_dict({**asdict(cfg), "colour": 1})
    for value in (1, None):  # a misspelt field is named even when its value means "not given"
        with pytest.raises(ValueError, match=rf"^unknown {cls.__name__} field\(s\) \['colour'\]"):
            configs.override(cfg, colour=value)


def test_nested_configs_are_checked_and_rebuilt():
    d = asdict(MODEL_PRESETS["nsarm-8b"])
    assert isinstance(ModelConfig.from_dict(d).transform_net.stages[0], tuple)  # tuple of tuples
    assert ModelConfig.from_dict({**d, "transform_net": None}).transform_net is None  # `X | None` kept None
    d["transformer"]["depht"] = 3  # a typo inside a part config is named, not a TypeError from its __init__
    with pytest.raises(ValueError, match=r"unknown TransformerConfig field\(s\) \['depht'\]"):
        ModelConfig.from_dict(d)


def test_override_skips_none_converts_lists_and_validates():
    base = SHARD_PRESETS["tiny"]
    assert configs.override(base, shard_size=None, threads=None) == base  # None = not given (a CLI flag left out)
    assert shard_config("tiny", shard_size=3).shard_size == 3
    assert degradation_config("seesr", noise_range=[2, 4]).noise_range == (2, 4)  # JSON list → tuple
    with pytest.raises(ValueError, match="jpeg_quality must be in"):  # the config's own checks still run
        shard_config("tiny", jpeg_quality=0)


@dataclass(frozen=True)
class _Cfg:
    a: int = 1
    b: tuple[int, ...] = (2, 3)
    c: str = "x"
    inner: _Inner | None = None


@dataclass(frozen=True)
class _Inner:
    z: tuple[float, float] = (0.5, 1.0)
    tags: list = field(default_factory=list)


def test_the_hash_is_sha256_of_the_sorted_key_json_of_asdict():
    cfg = _Cfg(inner=_Inner())
    d = asdict(cfg)
    assert configs.config_hash(cfg) == hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]
    assert configs.config_hash(cfg, digits=8) == configs.config_hash(cfg)[:8]
    assert configs.config_hash(cfg, exclude={"c"}) == configs.config_hash(_Cfg(c="y", inner=_Inner()), exclude={"c"})
    assert configs.config_hash(cfg, exclude={"c"}) != configs.config_hash(cfg)
    with_v = json.dumps({**d, "v": 1}, sort_keys=True, separators=(",", ":")).encode()
    assert configs.config_hash(cfg, extra={"v": 1}, compact=True) == hashlib.sha256(with_v).hexdigest()[:12]
    assert configs.from_dict(_Cfg, json.loads(json.dumps(d))) == cfg  # a dataclass without its own from_dict


def _calls(fn: ast.FunctionDef) -> set[str]:
    return {ast.unparse(n.func) for n in ast.walk(fn) if isinstance(n, ast.Call)}


def test_no_stage_keeps_its_own_resolver_loader_or_hash():
    """The structure behind the tests above: every `from_dict` delegates to dataset.configs, no library writes
    its own 'unknown … preset' message, and no config module hashes by hand."""
    config_modules = ["dataset/config.py", "degradation/config.py", "captioning/config.py", "nsarm/config.py",
                      "nsarm/train/config.py", "nsarm/model.py"]
    for rel in config_modules:
        tree = ast.parse((REPO / rel).read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not imported & {"hashlib", "json"}, f"{rel} hashes or serialises by itself"
        for fn in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "from_dict"):
            assert "configs.from_dict" in _calls(fn), f"{rel}: from_dict does not use dataset.configs.from_dict"
    own_message = re.compile(r"f[\"']unknown [\w ]*preset")  # an f-string like f"unknown training preset {name!r}"
    for lib in ("dataset", "degradation", "captioning", "nsarm", "flows"):
        for path in (REPO / lib).rglob("*.py"):
            if path.relative_to(REPO).as_posix() != "dataset/configs.py":
                assert not own_message.search(path.read_text()), f"{path.relative_to(REPO)} words its own error"
