"""img2img backend: the source image, partly noised (``strength``), denoised toward the domain prompt.

Stable Diffusion 1.x/2.x folders load as ``StableDiffusionImg2ImgPipeline``; a folder whose
model_index.json names an SDXL pipeline loads as ``StableDiffusionXLImg2ImgPipeline``. The twin covers
the whole source (crop None) at the source size, or scaled to ``--size`` on its longer side, with both
sides rounded down to a multiple of 8; the manifest's ``size`` records the exact result.
"""

from __future__ import annotations

from drsf_kit.errors import ConfigError
from drsf_kit.synth.base import GeneratedItem, SourceItem, SynthConfig
from drsf_kit.synth.diffusion import (
    DEFAULT_REPOS,
    DiffusionGenerator,
    group_by_size,
    load_pretrained,
    pipeline_class_name,
    resolve_weights,
)
from drsf_kit.synth.geometry import fit_size


class Img2ImgGenerator(DiffusionGenerator):
    """Full-frame twins by image-to-image diffusion with the domain prompt."""

    name = "img2img"

    def __init__(self, cfg: SynthConfig):
        super().__init__(cfg)
        if not 0.0 < cfg.strength <= 1.0:
            raise ConfigError(f"--strength must be in (0, 1], got {cfg.strength}")
        if int(cfg.steps * cfg.strength) < 1:
            raise ConfigError(
                f"--steps {cfg.steps} x --strength {cfg.strength} leaves no denoising step; raise either"
            )
        import diffusers

        folder = resolve_weights(cfg.model, DEFAULT_REPOS["sd15"], "Stable Diffusion pipeline")
        self.sdxl = "XL" in pipeline_class_name(folder)
        if self.sdxl:
            pipe = load_pretrained(diffusers.StableDiffusionXLImg2ImgPipeline, folder,
                                   "SDXL pipeline", dtype=self.dtype)
        else:
            pipe = load_pretrained(diffusers.StableDiffusionImg2ImgPipeline, folder,
                                   "Stable Diffusion pipeline", dtype=self.dtype,
                                   safety_checker=None, requires_safety_checker=False)
        self._finish_loading(pipe, cfg.model or DEFAULT_REPOS["sd15"], [folder])

    def params(self) -> dict:
        """Strength, steps and guidance."""
        return {"strength": self.cfg.strength, "steps": self.cfg.steps, "guidance": self.cfg.guidance}

    def generate(self, items: list[SourceItem], domain: str, seeds: list[int]) -> list[GeneratedItem]:
        """One twin per item; items of equal output size share a pipeline call."""
        from PIL import Image

        prompt = self.prompts.prompt(domain)
        sizes = [fit_size(*item.image.size, self.cfg.size) for item in items]
        results: list[GeneratedItem | None] = [None] * len(items)
        for group in group_by_size(sizes, self.cfg.batch_size):
            size = sizes[group[0]]
            images = [items[i].image.convert("RGB").resize(size, Image.BICUBIC) for i in group]
            out = self.pipe(
                prompt=[prompt] * len(group), image=images, strength=self.cfg.strength,
                num_inference_steps=self.cfg.steps, guidance_scale=self.cfg.guidance,
                negative_prompt=self.negative(len(group)),
                generator=self.torch_generators([seeds[i] for i in group]), output_type="pil",
            ).images
            for i, image in zip(group, out):
                results[i] = GeneratedItem(image=image.convert("RGB"), crop=None, size=list(image.size),
                                           prompt=prompt)
        return results
