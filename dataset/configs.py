"""What every stage's frozen config shares (STYLE G3/G4): preset lookup, overrides, loading from JSON, the hash.

    cfg = resolve(PRESETS, "tiny", "shard")          # an unknown name: one ValueError naming kind, name and choices
    cfg = override(cfg, shard_size=8, threads=None)  # None = not given (a CLI flag or flow parameter left out)
    cfg = from_dict(ShardConfig, json.loads(text))   # unknown keys named; JSON lists → tuples; nested configs
    h = config_hash(cfg, exclude={"threads"})        # 12 hex digits of sha256 over the sorted-key JSON of asdict

Used by the shard (dataset/config.py), degradation, caption, training and model configs. Pure standard library (no
torch, no I/O), and in `dataset/`, the bottom library, so every other library may import it (docs/DESIGN.md §2).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

C = TypeVar("C")


def resolve(presets: Mapping[str, C], name: str, kind: str) -> C:
    """`presets[name]`, or the one error every stage gives for an unknown preset.

    Args:
        presets: the stage's `PRESETS` table.
        name: the preset asked for (a CLI `--preset`, a flow parameter).
        kind: what the presets configure, as users call it ("shard", "degradation", "training", …).

    Raises:
        ValueError: `unknown {kind} preset {name!r}; choose from [...]`.
    """
    if isinstance(name, str) and name in presets:
        return presets[name]
    raise ValueError(f"unknown {kind} preset {name!r}; choose from {sorted(presets)}")


def override(cfg: C, **changes: Any) -> C:
    """A copy of the frozen dataclass `cfg` with `changes` applied; `None` means "not given" and is skipped.

    Values are read as `from_dict` reads them (JSON lists become tuples, dicts become nested configs), and the
    config's own `__post_init__` checks the result. An unknown field raises, naming it and the valid ones (even with
    a `None` value: a misspelt flag is never silently dropped).
    """
    typed = _typed(type(cfg), changes)
    return dataclasses.replace(cfg, **{k: v for k, v in typed.items() if v is not None})


def from_dict(cls: type[C], d: Mapping[str, Any]) -> C:
    """Rebuild the frozen dataclass `cls` from its JSON form (`asdict` + json).

    Missing keys take the defaults (configs saved before a field existed), unknown keys raise naming them (a config
    from a newer version is never half-read), lists become tuples for tuple-typed fields and dicts become the
    nested config dataclasses (through their own `from_dict`, so their upgrades run).
    """
    return cls(**_typed(cls, d))


def config_hash(cfg: Any, *, exclude: Iterable[str] = (), extra: Mapping[str, Any] | None = None,
                digits: int = 12, compact: bool = False) -> str:
    """Hex prefix of sha256 over the sorted-key JSON of `asdict(cfg)`: the same on every process and machine.

    Args:
        cfg: a config dataclass instance.
        exclude: fields left out (knobs that do not change the output, so a rerun with them changed resumes).
        extra: keys added to (or replacing) the fields, e.g. a format version or a path reduced to its name.
        digits: length of the prefix.
        compact: JSON without spaces after `,` and `:`. Only the degradation stage passes True: its folder names
            `lr/<hash>/` were made that way before the stages shared this function, and existing folders keep
            their names (tests/unit/test_config_hashes.py pins every stage's values).
    """
    skip = set(exclude)
    d = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in skip} | dict(extra or {})
    text = json.dumps(d, sort_keys=True, separators=(",", ":") if compact else None)
    return hashlib.sha256(text.encode()).hexdigest()[:digits]


def _typed(cls: type, d: Mapping[str, Any]) -> dict[str, Any]:
    """`d`'s values converted to `cls`'s field types; unknown keys are a ValueError naming them."""
    hints = _field_types(cls)
    unknown = sorted(set(d) - set(hints))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; valid: {sorted(hints)}")
    return {k: _as_type(hints[k], v) for k, v in d.items()}


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """{field name: resolved type} of a dataclass (string annotations evaluated in its module)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _as_type(tp: Any, value: Any) -> Any:
    """`value` as read from JSON, converted to type `tp` where JSON cannot say it: tuples and nested configs."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):  # `X | None`: the member that fits the JSON value
        for member in typing.get_args(tp):
            if member is not type(None) and _fits(member, value):
                return _as_type(member, value)
        return value
    if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
        loader = getattr(tp, "from_dict", None)
        return loader(value) if loader else from_dict(tp, value)
    if origin is tuple and isinstance(value, list | tuple):
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]
            return tuple(_as_type(args[0], v) for v in value)
        if len(args) == len(value):  # tuple[X, Y]
            return tuple(_as_type(a, v) for a, v in zip(args, value, strict=True))
        return tuple(value)  # a wrong length: the config's own check names it
    return value


def _fits(tp: Any, value: Any) -> bool:
    """Whether a JSON value is the form of type `tp` that `_as_type` converts (a dict for a config, a list for a
    tuple)."""
    if dataclasses.is_dataclass(tp):
        return isinstance(value, Mapping)
    return typing.get_origin(tp) is tuple and isinstance(value, list | tuple)
