"""Pseudo-target domain generation: one interface, four backends, one manifest format.

``GENERATORS`` maps a backend name to its builder: ``procedural`` (2D weather, no weights),
``img2img``, ``gligen`` and ``controlnet`` (diffusers; local weights only). ``run_synth(SynthConfig)``
is what `drsf synth` calls; ``merge_shards`` is `drsf synth merge`. Diffusers is imported only when a
diffusion backend is built.
"""

from drsf_kit.synth.base import (
    DEFAULT_PROMPTS,
    DEFAULT_SYNTH_DOMAINS,
    GeneratedItem,
    Generator,
    SourceItem,
    SynthConfig,
    item_seed,
    load_prompts,
)
from drsf_kit.synth.consistency import layout_consistency
from drsf_kit.synth.registry import GENERATORS, build_generator
from drsf_kit.synth.runner import merge_shards, parse_shard, run_synth

__all__ = [
    "DEFAULT_PROMPTS",
    "DEFAULT_SYNTH_DOMAINS",
    "GENERATORS",
    "GeneratedItem",
    "Generator",
    "SourceItem",
    "SynthConfig",
    "build_generator",
    "item_seed",
    "layout_consistency",
    "load_prompts",
    "merge_shards",
    "parse_shard",
    "run_synth",
]
