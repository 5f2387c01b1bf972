"""How fast a GPU model trains a model type, relative to a V100 (pure data, no I/O).

- K80, P100, V100: measured. The mean over batch sizes of Gavel's single-GPU throughput ratio
  (``gavel_throughputs.json``, Narayanan et al. OSDI'20, MIT licence) for the model family,
  computed once with ``gpufleet.sched.gavel.load_gavel`` and written down here so the server
  needs no data file.
- Newer GPUs: a *stated* factor per GPU class, the same for every model type (public training
  benchmarks put them roughly there; Gavel did not measure them). Documented in
  docs/recommender.md; replace with your lab's own numbers when you have them.
"""

from __future__ import annotations

import re
from functools import lru_cache

# Model families a request may name, with the spellings users type.
MODEL_FAMILIES: dict[str, str] = {
    "resnet18": "ResNet-18",
    "resnet50": "ResNet-50",
    "resnet": "ResNet-50",
    "cnn": "ResNet-50",
    "vit": "ResNet-50",
    "transformer": "Transformer",
    "bert": "Transformer",
    "gpt": "Transformer",
    "lm": "LM",
    "lstm": "LM",
    "rnn": "LM",
    "recommendation": "Recommendation",
    "dlrm": "Recommendation",
    "a3c": "A3C",
    "rl": "A3C",
    "cyclegan": "CycleGAN",
    "gan": "CycleGAN",
}

# (family, gpu class) -> throughput / V100 throughput, from Gavel (see the module docstring).
MEASURED: dict[tuple[str, str], float] = {
    ("A3C", "k80"): 0.479, ("A3C", "p100"): 0.792,
    ("CycleGAN", "k80"): 0.114, ("CycleGAN", "p100"): 0.543,
    ("LM", "k80"): 0.252, ("LM", "p100"): 0.843,
    ("Recommendation", "k80"): 1.325, ("Recommendation", "p100"): 2.173,
    ("ResNet-18", "k80"): 0.173, ("ResNet-18", "p100"): 0.926,
    ("ResNet-50", "k80"): 0.16, ("ResNet-50", "p100"): 0.663,
    ("Transformer", "k80"): 0.299, ("Transformer", "p100"): 0.762,
}  # fmt: skip

# Stated (not measured here) speed of newer GPU classes relative to a V100, any model type.
STATED: dict[str, float] = {
    "h100": 3.0, "h200": 3.2, "a100": 2.0, "l40": 1.6, "rtx4090": 1.6, "a6000": 1.3,
    "a40": 1.3, "a10": 0.9, "rtx3090": 1.1, "rtx2080ti": 0.75, "titanv": 0.9, "t4": 0.35,
    "v100": 1.0, "p100": 0.75, "k80": 0.25, "p40": 0.5,
}  # fmt: skip

_CLASS_PATTERNS = (
    ("h200", r"h200"), ("h100", r"h100"), ("a100", r"a100"), ("l40", r"l40"),
    ("rtx4090", r"4090"), ("a6000", r"a6000"), ("a40", r"\ba40\b"), ("a10", r"\ba10g?\b"),
    ("rtx3090", r"3090"), ("rtx2080ti", r"2080"), ("titanv", r"titan v"), ("t4", r"\bt4\b"),
    ("v100", r"v100"), ("p100", r"p100"), ("p40", r"p40"), ("k80", r"k80"),
)  # fmt: skip


def normalise_model(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def model_family(name: str) -> str | None:
    """``"ResNet-50"``, ``"resnet50"``, ``"BERT"`` -> the family; None when unknown."""
    key = normalise_model(name)
    if key in MODEL_FAMILIES:
        return MODEL_FAMILIES[key]
    for fam in set(MODEL_FAMILIES.values()):
        if normalise_model(fam) == key:
            return fam
    return None


def known_models() -> list[str]:
    return sorted(MODEL_FAMILIES)


@lru_cache(maxsize=1024)
def gpu_class(gpu_name: str) -> str | None:
    """NVML's name (``"NVIDIA A100-SXM4-80GB"``) -> a class (``"a100"``); None when unknown."""
    low = gpu_name.lower()
    for cls, pattern in _CLASS_PATTERNS:
        if re.search(pattern, low):
            return cls
    return None


@lru_cache(maxsize=4096)
def relative_speed(gpu_name: str, family: str | None) -> float:
    """Throughput relative to a V100 for this model family (1.0 when nothing is known)."""
    cls = gpu_class(gpu_name)
    if cls is None:
        return 1.0
    if family is not None and (family, cls) in MEASURED:
        return MEASURED[(family, cls)]
    return STATED.get(cls, 1.0)
