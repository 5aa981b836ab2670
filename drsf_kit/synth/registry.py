"""``GENERATORS``: backend name -> builder, and ``build_generator``, the one way to get a backend.

It lives apart from ``base.py`` because every backend imports ``base.py`` (the interface) while this
dict imports every backend: kept in one module the two would import each other.
"""

from __future__ import annotations

from collections.abc import Callable

from drsf_kit.errors import ConfigError
from drsf_kit.synth.base import Generator, SynthConfig
from drsf_kit.synth.controlnet import ControlNetGenerator
from drsf_kit.synth.gligen import GligenGenerator
from drsf_kit.synth.img2img import Img2ImgGenerator
from drsf_kit.synth.procedural import ProceduralGenerator


# Each diffusion backend imports diffusers inside its pipeline loader, so importing them all here is light.
def _procedural(cfg: SynthConfig) -> Generator:
    return ProceduralGenerator(cfg)


def _img2img(cfg: SynthConfig) -> Generator:
    return Img2ImgGenerator(cfg)


def _gligen(cfg: SynthConfig) -> Generator:
    return GligenGenerator(cfg)


def _controlnet(cfg: SynthConfig) -> Generator:
    return ControlNetGenerator(cfg)


GENERATORS: dict[str, Callable[[SynthConfig], Generator]] = {
    "procedural": _procedural,
    "img2img": _img2img,
    "gligen": _gligen,
    "controlnet": _controlnet,
}


def build_generator(cfg: SynthConfig) -> Generator:
    """Instantiate ``cfg.backend``; an unknown name raises ConfigError listing the valid ones."""
    try:
        builder = GENERATORS[cfg.backend]
    except KeyError:
        raise ConfigError(
            f"unknown synth backend {cfg.backend!r}; valid backends: {', '.join(GENERATORS)}"
        ) from None
    return builder(cfg)
