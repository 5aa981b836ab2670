"""Builders of tiny random-initialised diffusion pipelines for tests (no download, a few MB each).

Each builder writes a diffusers folder with ``save_pretrained`` and returns its path, so tests
exercise the same local-folder loading path that real weights go through. The models are random:
their images are noise-like, but shapes, seeds, prompts and the batching logic are all real.
"""

from __future__ import annotations

import string
from pathlib import Path


def _tokenizer():
    """A character-level CLIP tokenizer: every word splits into letters, so distinct prompts give
    distinct token ids (an unknown-word vocabulary would map every prompt to the same tokens)."""
    from transformers import CLIPTokenizer

    tokens = ["<|startoftext|>", "<|endoftext|>", "!"]
    tokens += list(string.ascii_lowercase) + [f"{c}</w>" for c in string.ascii_lowercase]
    tokens += list("0123456789.,") + [f"{c}</w>" for c in "0123456789.,"]
    tokens += ["th", "th</w>", "in", "in</w>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = [("t", "h"), ("i", "n"), ("t", "h</w>"), ("i", "n</w>")]
    tok = CLIPTokenizer(vocab=vocab, merges=merges, unk_token="<|endoftext|>", pad_token="!", model_max_length=77)
    assert len(tok) < 1000, "the tiny text encoder embeds 1000 ids"
    return tok


def _text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=2, hidden_size=32, intermediate_size=37,
        layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=2, vocab_size=1000,
        max_position_embeddings=77, projection_dim=32,
    )
    return CLIPTextModel(config)


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), latent_channels=4, sample_size=32,
    )


def _unet(gated: bool = False):
    from diffusers import UNet2DConditionModel

    kwargs = {"attention_type": "gated"} if gated else {}
    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        norm_num_groups=32, **kwargs,
    )


def _scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )


def _components(folder: Path, gated: bool = False) -> dict:
    import torch

    torch.manual_seed(0)  # the same folder contents every time the builder runs
    return {
        "unet": _unet(gated), "vae": _vae(), "text_encoder": _text_encoder(),
        "tokenizer": _tokenizer(), "scheduler": _scheduler(),
    }


def build_tiny_sd(folder: str | Path) -> Path:
    """Save a tiny Stable Diffusion (img2img-compatible) pipeline folder and return its path."""
    from diffusers import StableDiffusionImg2ImgPipeline

    folder = Path(folder)
    pipe = StableDiffusionImg2ImgPipeline(
        **_components(folder), safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.save_pretrained(folder)
    return folder


def build_tiny_gligen(folder: str | Path) -> Path:
    """Save a tiny box-grounded (GLIGEN, gated attention + position net) pipeline folder."""
    from diffusers import StableDiffusionGLIGENPipeline

    folder = Path(folder)
    pipe = StableDiffusionGLIGENPipeline(
        **_components(folder, gated=True), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def build_tiny_controlnet(folder: str | Path) -> Path:
    """Save a tiny ControlNet folder (config.json + weights); pair it with ``build_tiny_sd``."""
    import torch
    from diffusers import ControlNetModel

    folder = Path(folder)
    torch.manual_seed(0)
    # The tiny VAE downsamples by 2, so the conditioning embedding must downsample by 2 as well.
    net = ControlNetModel(
        block_out_channels=(32, 64), layers_per_block=1, in_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), cross_attention_dim=32,
        conditioning_embedding_out_channels=(16, 32), norm_num_groups=32,
    )
    net.save_pretrained(folder)
    return folder


def build_tiny_sdxl(folder: str | Path) -> Path:
    """Save a tiny SDXL img2img pipeline folder (two text encoders, text-time embeddings)."""
    import torch
    from diffusers import StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = Path(folder)
    torch.manual_seed(0)
    # 80 = 6 time ids x 8 + the 32-wide pooled text embedding
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=32,
    )
    config = CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=2, hidden_size=32, intermediate_size=37,
        layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=2, vocab_size=1000,
        max_position_embeddings=77, projection_dim=32,
    )
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=_vae(), text_encoder=CLIPTextModel(config), text_encoder_2=CLIPTextModelWithProjection(config),
        tokenizer=_tokenizer(), tokenizer_2=_tokenizer(), unet=unet, scheduler=_scheduler(),
        requires_aesthetics_score=False,
    )
    pipe.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------------------
# A tiny source domain in DWD layout (street-like scenes with boxes and masks), built in the test.

_SKY, _BUILDING, _ROAD, _SIDEWALK, _CAR, _PERSON = 10, 2, 0, 1, 13, 11


def _scene(rng, h: int, w: int):
    """One street-like scene: sky, buildings, sidewalk, road, cars with tail lights, people.

    Returns (uint8 RGB [H,W,3], uint8 train-id mask [H,W], list of (class, x0, y0, x1, y1))."""
    import numpy as np

    img = np.zeros((h, w, 3), np.float32)
    mask = np.full((h, w), 255, np.uint8)
    horizon = int(h * rng.uniform(0.4, 0.5))
    rows = np.arange(h, dtype=np.float32)[:, None]
    img[:horizon] = (np.array([0.55, 0.7, 0.95]) + 0.3 * (1 - rows[:horizon, :, None] / horizon))[:, :, :] * 0.85
    mask[:horizon] = _SKY
    x = 0
    while x < w:  # a skyline of buildings
        bw = int(rng.integers(20, 60))
        top = int(rng.integers(int(0.1 * h), horizon - 5))
        shade = rng.uniform(0.3, 0.6)
        img[top:horizon, x:x + bw] = shade * np.array([1.0, 0.97, 0.92])
        mask[top:horizon, x:x + bw] = _BUILDING
        x += bw + int(rng.integers(0, 8))
    side = horizon + int(0.08 * h)
    img[horizon:side] = 0.62
    mask[horizon:side] = _SIDEWALK
    img[side:] = 0.3
    mask[side:] = _ROAD
    img[side + (h - side) // 2: side + (h - side) // 2 + 2, ::12] = 0.95  # lane marks
    objects = []
    for _ in range(int(rng.integers(2, 6))):
        cw = int(rng.integers(30, 70))
        ch = int(cw * rng.uniform(0.45, 0.7))
        x0 = int(rng.integers(0, w - cw))
        y1 = int(rng.integers(side + ch // 2, h))
        y0 = max(side - ch // 2, y1 - ch)
        img[y0:y1, x0:x0 + cw] = rng.uniform(0.1, 0.9, 3)
        img[y1 - ch // 3:y1 - ch // 3 + 3, x0 + 2:x0 + 6] = (1.0, 0.05, 0.05)  # tail lights
        img[y1 - ch // 3:y1 - ch // 3 + 3, x0 + cw - 6:x0 + cw - 2] = (1.0, 0.05, 0.05)
        mask[y0:y1, x0:x0 + cw] = _CAR
        objects.append(("car", x0, y0, x0 + cw, y1))
    for _ in range(int(rng.integers(0, 3))):
        pw, ph = int(rng.integers(6, 10)), int(rng.integers(18, 30))
        x0 = int(rng.integers(0, w - pw))
        y1 = int(rng.integers(horizon + ph // 2, side + 4))
        y0 = y1 - ph
        img[y0:y1, x0:x0 + pw] = rng.uniform(0.0, 0.5, 3)
        mask[y0:y1, x0:x0 + pw] = _PERSON
        objects.append(("person", x0, y0, x0 + pw, y1))
    img += rng.normal(0, 0.01, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), mask, objects


def make_tiny_dwd(root, n: int = 6, domain: str = "daytime_clear", size: tuple[int, int] = (180, 320),
                  seed: int = 0, split: str = "train") -> Path:
    """Write ``n`` scenes as ROOT/<domain>/VOC2007/{JPEGImages,Annotations,ImageSets/Main,
    SegmentationClass}; returns ROOT. Boxes in the XML are VOC 1-based pixel corners."""
    import numpy as np
    from PIL import Image

    root = Path(root)
    voc = root / domain / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main", "SegmentationClass"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = size
    ids = [f"img{i:04d}" for i in range(n)]
    for image_id in ids:
        rgb, mask, objects = _scene(rng, h, w)
        Image.fromarray(rgb).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=95)
        Image.fromarray(mask).save(voc / "SegmentationClass" / f"{image_id}.png")
        objs = "".join(
            f"<object><name>{c}</name><difficult>0</difficult><bndbox><xmin>{x0 + 1}</xmin>"
            f"<ymin>{y0 + 1}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
            for c, x0, y0, x1, y1 in objects
        )
        (voc / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><filename>{image_id}.jpg</filename><size><width>{w}</width>"
            f"<height>{h}</height><depth>3</depth></size>{objs}</annotation>"
        )
    (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root
