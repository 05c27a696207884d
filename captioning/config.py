"""`CaptionConfig`: how the caption stage captions a dataset (backend, model, question, sampling), with the paper's
defaults, named presets and the config hash that names the output folder `{root}/captions/{cap_hash}/`.

NSARM (arXiv 2510.00820) captions with LLaVA-v1.5-13B through SUPIR's agent: question "Describe this image and its
style in a very detailed manner.", temperature 0.2, top-p 0.7, at most 512 new tokens, fp16
(Xiangtaokong/NSARM tools/annotate.py; see ../shared/reference/peers-and-anchors.md §D.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from dataset import configs

BACKENDS = ("llava", "metadata", "fixed")
IMAGE_SOURCES = ("hr", "lr")
DTYPES = ("auto", "float16", "bfloat16", "float32")

PAPER_QUESTION = "Describe this image and its style in a very detailed manner."
# NSARM's fixed positive prompt, used when no caption is wanted and as the last fallback of the other backends.
FIXED_CAPTION = "A high-quality image with harmonious colors and rich details."
# The llava-hf conversation format of LLaVA-1.5 (the model card's prompt): one <image> placeholder, which the
# processor expands to one token per visual feature.
LLAVA15_TEMPLATE = "USER: <image>\n{question} ASSISTANT:"
# Where the default weights come from; they are never downloaded by this code (see captioner.missing_model_message).
DEFAULT_MODEL_ID = "llava-hf/llava-1.5-13b-hf"


@dataclass(frozen=True)
class CaptionConfig:
    backend: str = "llava"  # llava | metadata | fixed
    model_path: str = ""  # LOCAL directory of a llava-hf checkpoint (e.g. a download of DEFAULT_MODEL_ID); llava only
    question: str = PAPER_QUESTION  # the paper's question to LLaVA
    prompt_template: str = LLAVA15_TEMPLATE  # "{question}" is substituted; must contain exactly one "<image>"
    temperature: float = 0.2  # paper: sampling temperature
    top_p: float = 0.7  # paper: nucleus sampling
    max_new_tokens: int = 512  # paper: generation budget per caption
    greedy: bool = False  # True: argmax decoding (deterministic, ignores temperature/top_p)
    seed: int = 0  # sampling seed; each shard reseeds with seed + shard id, so a rerun reproduces a shard
    batch_size: int = 16  # images per generate() call (left-padded)
    dtype: str = "auto"  # auto = float16 on CUDA (the paper), float32 on CPU; or float16 | bfloat16 | float32
    device: str = "auto"  # auto = cuda when available, else cpu
    image: str = "hr"  # which image is captioned: hr (the 1024² photo) | lr (the degraded 256² input, as NSARM test)
    deg_hash: str = ""  # with image="lr": the degradation config hash naming {root}/lr/{deg_hash}/
    metadata_fields: tuple[str, ...] = (  # metadata backend (and llava's fallback): first non-empty field wins
        "photo_description", "description", "ai_description", "alt_description",
    )
    fixed_caption: str = FIXED_CAPTION  # fixed backend, and the last fallback of the other two
    text_max_tokens: int = 512  # the text encoder's (flan-t5-xl) token limit; longer captions are counted in stats
    t5_tokenizer_path: str = ""  # local T5 tokenizer dir for exact counting; empty = the approximation in worker.py

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"CaptionConfig.backend={self.backend!r}: expected one of {BACKENDS}")
        if self.image not in IMAGE_SOURCES:
            raise ValueError(f"CaptionConfig.image={self.image!r}: expected one of {IMAGE_SOURCES}")
        if self.image == "lr" and not self.deg_hash:
            raise ValueError("CaptionConfig.image='lr' needs deg_hash (the folder name under {root}/lr/)")
        if self.dtype not in DTYPES:
            raise ValueError(f"CaptionConfig.dtype={self.dtype!r}: expected one of {DTYPES}")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError(f"CaptionConfig: batch_size={self.batch_size} and max_new_tokens="
                             f"{self.max_new_tokens} must be >= 1")
        if self.prompt_template.count("<image>") != 1 or "{question}" not in self.prompt_template:
            raise ValueError(f"CaptionConfig.prompt_template={self.prompt_template!r}: needs one '<image>' and "
                             "a '{question}' placeholder")
        if not self.greedy and not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise ValueError(f"CaptionConfig: sampling needs temperature > 0 and 0 < top_p <= 1, got "
                             f"{self.temperature}, {self.top_p} (or set greedy=True)")

    @classmethod
    def from_dict(cls, d: dict) -> CaptionConfig:
        """Rebuild a config saved with `asdict` (config.json beside the captions); unknown keys are an error."""
        return configs.from_dict(cls, d)

    def prompt(self) -> str:
        """The text prompt given to LLaVA for every image (template with the question filled in)."""
        return self.prompt_template.replace("{question}", self.question)

    def generation_params(self) -> dict:
        """Generation settings recorded beside every caption (empty for the backends that do not generate)."""
        if self.backend != "llava":
            return {}
        if self.greedy:
            return {"do_sample": False, "max_new_tokens": self.max_new_tokens}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p,
                "max_new_tokens": self.max_new_tokens, "seed": self.seed}


# Fields that never change a caption's text: throughput and placement knobs. They stay out of the hash so a rerun
# on other hardware (or with another batch size) resumes into the same folder.
_NOT_HASHED = frozenset({"batch_size", "device", "t5_tokenizer_path", "text_max_tokens"})


def cap_hash(cfg: CaptionConfig) -> str:
    """12-hex-digit hash of the fields that determine caption text; names `{root}/captions/{cap_hash}/`.

    The model is identified by its directory's last component (e.g. "llava-1.5-13b-hf"), so the same weights
    mounted at another path on another machine hash the same. Fields irrelevant to a backend (the LLaVA settings
    under `fixed`) are included anyway: a hash that changes too often costs a recompute, one that changes too
    rarely silently mixes captions.
    """
    model = PurePosixPath(cfg.model_path.rstrip("/")).name if cfg.model_path else ""
    return configs.config_hash(cfg, exclude=_NOT_HASHED, extra={"model_path": model})


PRESETS: dict[str, CaptionConfig] = {
    "paper": CaptionConfig(),  # LLaVA-1.5-13B, sampled as in NSARM; needs --model-path
    "greedy": CaptionConfig(greedy=True),  # deterministic LLaVA captions
    "metadata": CaptionConfig(backend="metadata"),  # the source's own descriptions, no model
    "fixed": CaptionConfig(backend="fixed"),  # the paper's fixed prompt for every image
}


def caption_config(preset: str, **overrides) -> CaptionConfig:
    """The named preset with field overrides (`None` = not given, so CLI defaults can be passed through); an
    unknown name raises naming the choices."""
    return configs.override(configs.resolve(PRESETS, preset, "caption"), **overrides)
