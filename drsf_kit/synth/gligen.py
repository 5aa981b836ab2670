"""gligen backend: box-grounded text-to-image (the open stand-in for the authors' InstanceDiffusion).

Following the authors' recipe (docs/synth.md, "Diffusion backends"): the source is centre-cropped to a square (720x720
of a 1280x720 DWD frame) and the twin is generated at ``--size`` (default 512). Source boxes are clipped
to the crop, dropped when nothing is left inside, and given to GLIGEN normalised to [0, 1], each with
the phrase "A {object} is {action} in a {weather} {scene} during {time}."; the domain prompt is the
global caption. Images with more than ``--max-boxes`` boxes inside the crop are skipped (our reading:
the authors' "> 15 boxes" counts the boxes that are actually grounded). diffusers' GLIGEN pipeline
takes one layout per call, so images go through it one at a time.
"""

from __future__ import annotations

import json

import numpy as np

from drsf_kit.data.classes import DWD_CLASSES
from drsf_kit.data.manifest import map_boxes
from drsf_kit.errors import ConfigError
from drsf_kit.synth.base import GeneratedItem, SourceItem, SynthConfig
from drsf_kit.synth.diffusion import DEFAULT_REPOS, DiffusionGenerator, load_pretrained, resolve_weights
from drsf_kit.synth.geometry import center_square_crop

# Fraction of the denoising steps that use the boxes (diffusers' default for GLIGEN).
SCHEDULED_SAMPLING_BETA = 0.3
DEFAULT_SIDE = 512


class GligenGenerator(DiffusionGenerator):
    """Square twins of the centre crop, objects grounded at their (reused) boxes."""

    name = "gligen"

    def __init__(self, cfg: SynthConfig):
        super().__init__(cfg)
        self.side = cfg.size or DEFAULT_SIDE
        if self.side % 8:
            raise ConfigError(f"--size for gligen must be a multiple of 8, got {self.side}")
        import diffusers

        folder = resolve_weights(cfg.model, DEFAULT_REPOS["gligen"], "GLIGEN pipeline")
        unet_config = folder / "unet" / "config.json"
        try:
            attention = json.loads(unet_config.read_text()).get("attention_type")
        except (OSError, json.JSONDecodeError):
            attention = None
        if attention != "gated":
            raise ConfigError(
                f"{folder} is not a GLIGEN model: {unet_config} must exist and set attention_type "
                f"'gated' (a box-grounded UNet with a position net), e.g. {DEFAULT_REPOS['gligen']}"
            )
        pipe = load_pretrained(diffusers.StableDiffusionGLIGENPipeline, folder, "GLIGEN pipeline",
                               dtype=self.dtype, safety_checker=None, requires_safety_checker=False)
        self._finish_loading(pipe, cfg.model or DEFAULT_REPOS["gligen"], [folder])

    def layout(self, item: SourceItem) -> tuple[list[int], np.ndarray, np.ndarray]:
        """``(crop, boxes normalised to [0,1] inside the crop, their labels)``."""
        crop = center_square_crop(*item.image.size)
        boxes, keep = map_boxes(np.asarray(item.boxes, np.float32), crop, [self.side, self.side])
        labels = np.asarray(item.labels).reshape(-1)[np.asarray(keep)]
        return crop, np.clip(np.asarray(boxes) / self.side, 0.0, 1.0), labels

    def skip_reason(self, item: SourceItem) -> str | None:
        """Too many boxes inside the crop for grounded generation."""
        n = len(self.layout(item)[1])
        if n > self.cfg.max_boxes:
            return f"too_many_boxes ({n} > {self.cfg.max_boxes})"
        return None

    def generate(self, items: list[SourceItem], domain: str, seeds: list[int]) -> list[GeneratedItem]:
        """One grounded twin per item (one pipeline call each)."""
        prompt = self.prompts.prompt(domain)
        results = []
        for item, gen in zip(items, self.torch_generators(seeds)):
            crop, boxes, labels = self.layout(item)
            phrases = [self.prompts.phrase(DWD_CLASSES[int(k) - 1], domain) for k in labels]
            if phrases:
                grounding = {"gligen_phrases": phrases, "gligen_boxes": boxes.tolist(),
                             "gligen_scheduled_sampling_beta": SCHEDULED_SAMPLING_BETA}
            else:
                # No object to ground: a placeholder box that is switched off from the first step.
                grounding = {"gligen_phrases": [""], "gligen_boxes": [[0.0, 0.0, 0.0, 0.0]],
                             "gligen_scheduled_sampling_beta": 0.0}
            image = self.pipe(
                prompt=prompt, height=self.side, width=self.side, num_inference_steps=self.cfg.steps,
                guidance_scale=self.cfg.guidance, negative_prompt=self.prompts.negative_prompt,
                generator=gen, output_type="pil", **grounding,
            ).images[0]
            results.append(GeneratedItem(
                image=image.convert("RGB"), crop=crop, size=list(image.size), prompt=prompt,
                extra={"phrases": phrases, "n_boxes": len(phrases)},
            ))
        return results
