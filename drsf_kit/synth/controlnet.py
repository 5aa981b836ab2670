"""controlnet backend: text-to-image conditioned on the source layout, so masks and boxes stay valid.

``--condition seg`` renders the source segmentation mask in the Cityscapes palette (the input of
seg ControlNets such as lllyasviel/sd-controlnet-seg; ignore pixels are black); ``--condition edges``
computes Canny-like edges of the source image with numpy (Sobel, non-maximum suppression, double
threshold with one hysteresis step). The twin covers the whole source (crop None) at the source size,
or ``--size`` on its longer side, rounded down to multiples of 8.
"""

from __future__ import annotations

import numpy as np

from drsf_kit.data.classes import CITYSCAPES_PALETTE
from drsf_kit.data.manifest import map_mask
from drsf_kit.errors import ConfigError, DataError
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


def palette_image(mask: np.ndarray) -> np.ndarray:
    """uint8 [H,W] train ids -> uint8 [H,W,3] Cityscapes colours (ids outside 0..18 are black)."""
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(CITYSCAPES_PALETTE)] = np.asarray(CITYSCAPES_PALETTE, np.uint8)
    return lut[np.asarray(mask, np.uint8)]


def canny_edges(rgb: np.ndarray, low: float = 0.1, high: float = 0.2) -> np.ndarray:
    """Canny-like edge map (uint8 [H,W], 0 or 255) of an RGB image, vectorised numpy.

    Args:
        rgb: uint8 [H,W,3].
        low: weak-edge threshold, as a fraction of the largest gradient magnitude.
        high: strong-edge threshold, same unit.
    """
    gray = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    p = np.pad(gray, 1, mode="edge")  # 3x3 binomial smoothing against JPEG noise
    gray = (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:] + 2 * p[1:-1, :-2] + 4 * p[1:-1, 1:-1]
            + 2 * p[1:-1, 2:] + p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) / 16.0
    p = np.pad(gray, 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    mag = np.hypot(gx, gy)
    if mag.max() <= 0:
        return np.zeros(gray.shape, np.uint8)
    mag /= mag.max()
    # non-maximum suppression along the gradient direction quantised to 0/45/90/135 degrees
    angle = (np.rad2deg(np.arctan2(gy, gx)) + 180.0) % 180.0
    sector = ((angle + 22.5) // 45).astype(int) % 4
    m = np.pad(mag, 1)
    h, w = mag.shape
    offsets = {0: (0, 1), 1: (1, 1), 2: (1, 0), 3: (1, -1)}
    keep = np.zeros_like(mag, bool)
    for s, (dy, dx) in offsets.items():
        a = m[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
        b = m[1 - dy:1 - dy + h, 1 - dx:1 - dx + w]
        keep |= (sector == s) & (mag >= a) & (mag >= b)
    thin = np.where(keep, mag, 0.0)
    strong = thin >= high
    weak = thin >= low
    s = np.pad(strong, 1)
    near_strong = np.zeros_like(strong)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            near_strong |= s[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
    return ((strong | (weak & near_strong)) * 255).astype(np.uint8)


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
