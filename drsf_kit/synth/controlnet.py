"""controlnet backend: text-to-image conditioned on the source layout, so masks and boxes stay valid.

``--condition seg`` renders the source segmentation mask in the ADE20K palette that seg ControlNets such
as lllyasviel/sd-controlnet-seg were trained on (Cityscapes classes mapped to ADE20K ones, see
``drsf_kit.synth.ade20k``; ignore pixels are black); ``--condition edges`` computes OpenCV Canny edges
of the source image with the thresholds of the canny ControlNet's annotator (100, 200). The twin covers the whole source (crop None) at the source size,
or ``--size`` on its longer side, rounded down to multiples of 8.
"""

from __future__ import annotations

import numpy as np

from drsf_kit.data.manifest import map_mask
from drsf_kit.errors import ConfigError, DataError
from drsf_kit.synth.ade20k import ade20k_image
from drsf_kit.synth.base import GeneratedItem, SourceItem, SynthConfig
from drsf_kit.synth.diffusion import (
    CONTROLNET_LAYOUT,
    DEFAULT_REPOS,
    DiffusionGenerator,
    group_by_size,
    load_pretrained,
    resolve_weights,
)
from drsf_kit.synth.geometry import fit_size

CONDITIONS = ("seg", "edges")


# The canny ControlNet's annotator (lllyasviel/ControlNet, annotator/canny + gradio_canny2image.py):
# cv2.Canny on the RGB image with low/high thresholds 100 and 200 (its defaults; the model was trained so)
CANNY_LOW, CANNY_HIGH = 100, 200


def palette_image(mask: np.ndarray) -> np.ndarray:
    """uint8 [H,W] train ids -> uint8 [H,W,3] in the ADE20K colours seg ControlNets were trained on
    (``drsf_kit.synth.ade20k``; ids outside 0..18, such as ignore 255, are black)."""
    return ade20k_image(mask)


def canny_edges(rgb: np.ndarray, low: int = CANNY_LOW, high: int = CANNY_HIGH) -> np.ndarray:
    """OpenCV Canny edge map (uint8 [H,W], 0 or 255) of an RGB image, as the canny ControlNet saw in training.

    Args:
        rgb: uint8 [H,W,3].
        low: hysteresis low threshold on the gradient magnitude (OpenCV units, 0..~1000).
        high: hysteresis high threshold.
    """
    try:
        import cv2
    except ImportError:
        raise ConfigError("--condition edges needs OpenCV: pip install opencv-python-headless") from None
    return cv2.Canny(np.ascontiguousarray(rgb, dtype=np.uint8), int(low), int(high))


class ControlNetGenerator(DiffusionGenerator):
    """Full-frame twins generated from the source's segmentation (or edges) and the domain prompt."""

    name = "controlnet"

    def __init__(self, cfg: SynthConfig):
        super().__init__(cfg)
        if cfg.condition not in CONDITIONS:
            raise ConfigError(f"unknown --condition {cfg.condition!r}; valid: {', '.join(CONDITIONS)}")
        import diffusers

        base = resolve_weights(cfg.model, DEFAULT_REPOS["sd15"], "Stable Diffusion pipeline")
        default_cn = DEFAULT_REPOS["controlnet_seg" if cfg.condition == "seg" else "controlnet_edges"]
        cn_folder = resolve_weights(cfg.controlnet, default_cn, "ControlNet", required="config.json")
        controlnet = load_pretrained(diffusers.ControlNetModel, cn_folder, "ControlNet",
                                     layout=CONTROLNET_LAYOUT, dtype=self.dtype)
        pipe = load_pretrained(diffusers.StableDiffusionControlNetPipeline, base,
                               "Stable Diffusion pipeline", controlnet=controlnet, dtype=self.dtype,
                               safety_checker=None, requires_safety_checker=False)
        model_id = f"{cfg.model or DEFAULT_REPOS['sd15']}+{cfg.controlnet or default_cn}"
        self._finish_loading(pipe, model_id, [base, cn_folder])

    @property
    def needs_masks(self) -> bool:
        """The seg condition reads the source masks."""
        return self.cfg.condition == "seg"

    def condition_image(self, item: SourceItem, size: tuple[int, int]):
        """The conditioning image of ``item`` at the twin's ``size`` (PIL RGB)."""
        from PIL import Image

        if self.cfg.condition == "seg":
            if item.mask is None:
                raise DataError(item.source_id, "--condition seg needs the source segmentation mask "
                                                "(SegmentationClass/<id>.png); use --condition edges without masks")
            return Image.fromarray(palette_image(map_mask(item.mask, None, list(size))))
        rgb = np.asarray(item.image.convert("RGB").resize(size, Image.BICUBIC))
        return Image.fromarray(canny_edges(rgb)).convert("RGB")

    def generate(self, items: list[SourceItem], domain: str, seeds: list[int]) -> list[GeneratedItem]:
        """One twin per item; items of equal output size share a pipeline call."""
        prompt = self.prompts.prompt(domain)
        sizes = [fit_size(*item.image.size, self.cfg.size) for item in items]
        results: list[GeneratedItem | None] = [None] * len(items)
        for group in group_by_size(sizes, self.cfg.batch_size):
            conditions = [self.condition_image(items[i], sizes[i]) for i in group]
            out = self.pipe(
                prompt=[prompt] * len(group), image=conditions, num_inference_steps=self.cfg.steps,
                guidance_scale=self.cfg.guidance, negative_prompt=self.negative(len(group)),
                generator=self.torch_generators([seeds[i] for i in group]), output_type="pil",
            ).images
            for i, image in zip(group, out):
                results[i] = GeneratedItem(image=image.convert("RGB"), crop=None, size=list(image.size),
                                           prompt=prompt, extra={"condition": self.cfg.condition})
        return results
