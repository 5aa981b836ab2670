"""What the diffusion backends share: finding weights locally, device and dtype, weight hashing, and
the batched, per-image-seeded pipeline call.

Weights come from a local folder (``--model PATH``) or from the local Hugging Face cache (a repo id
already downloaded, read with ``local_files_only=True``). Nothing is ever downloaded at run time;
missing weights raise a ConfigError that says which folder layout to put where.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from drsf_kit.errors import ConfigError, DataError
from drsf_kit.synth.base import Generator, SynthConfig, load_prompts
from drsf_kit.utils.io import WEIGHT_PATTERNS, fingerprint_tree  # model_hash: weight names + sizes/mtimes or cache hashes
from drsf_kit.utils.runtime import default_num_threads, resolve_device

# Repo ids tried in the local HF cache when --model / --controlnet are not given.
DEFAULT_REPOS = {
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "gligen": "masterful/gligen-1-4-generation-text-box",
    "controlnet_seg": "lllyasviel/sd-controlnet-seg",
    "controlnet_edges": "lllyasviel/sd-controlnet-canny",
}

PIPELINE_LAYOUT = (
    "model_index.json, scheduler/scheduler_config.json, "
    "text_encoder/{config.json, model.safetensors}, tokenizer/{vocab.json, merges.txt, "
    "tokenizer_config.json, special_tokens_map.json}, unet/{config.json, "
    "diffusion_pytorch_model.safetensors}, vae/{config.json, diffusion_pytorch_model.safetensors}"
)
CONTROLNET_LAYOUT = "config.json, diffusion_pytorch_model.safetensors"



def _missing_weights(what: str, spec: str, layout: str, reason: str) -> ConfigError:
    from huggingface_hub.constants import HF_HUB_CACHE

    return ConfigError(
        f"no local weights for the {what}: {reason}. Nothing is downloaded at run time. Either pass "
        f"a local folder in diffusers layout ({layout}), e.g. made with `huggingface-cli download "
        f"{spec} --local-dir weights/{spec.split('/')[-1]}` on a machine with network and copied "
        f"here, or put the repo {spec!r} in the local Hugging Face cache ({HF_HUB_CACHE})"
    )


def resolve_weights(spec: str | None, default_repo: str, what: str, required: str = "model_index.json") -> Path:
    """The local folder of a model: ``spec`` as a folder, else ``spec`` (or ``default_repo``) as a repo
    id in the local HF cache. Raises ConfigError with the expected layout when it is not there.

    Args:
        spec: a folder path, a repo id, or None for ``default_repo``.
        default_repo: the repo id used when ``spec`` is None.
        what: words for the error message ("Stable Diffusion pipeline", "ControlNet").
        required: the file that marks a complete folder (``model_index.json`` or ``config.json``).
    """
    layout = PIPELINE_LAYOUT if required == "model_index.json" else CONTROLNET_LAYOUT
    spec = spec or default_repo
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / required).is_file():
            raise _missing_weights(what, default_repo, layout, f"folder {path} has no {required}")
        return path
    looks_like_repo = spec.count("/") == 1 and not spec.startswith((".", "/", "~")) and not os.path.isabs(spec)
    if not looks_like_repo:
        raise _missing_weights(what, default_repo, layout, f"folder {path} does not exist")
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(spec, local_files_only=True))
    except (OSError, ValueError):  # LocalEntryNotFoundError (not cached), HFValidationError (bad id)
        raise _missing_weights(what, spec, layout, f"{spec!r} is not a folder and not in the local cache") from None
    if not (folder / required).is_file():
        raise _missing_weights(what, spec, layout, f"the cached copy {folder} has no {required}")
    return folder


def weights_hash(*folders: Path) -> str:
    """The fingerprint of the weights of ``folders`` (in order), without reading the weight files.

    A Stable Diffusion folder holds several GB (tens with every variant downloaded): hashing it all
    before each run cost minutes. ``fingerprint_tree`` uses the content hashes the Hugging Face cache
    already names its files by, else file sizes and modification times, plus the JSON configs.
    """
    return fingerprint_tree(*folders, patterns=WEIGHT_PATTERNS)


def pipeline_class_name(folder: Path) -> str:
    """``_class_name`` of a pipeline folder's model_index.json."""
    try:
        return json.loads((folder / "model_index.json").read_text()).get("_class_name", "")
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(folder / "model_index.json", f"cannot read the pipeline index ({exc})") from None


def resolve_dtype(dtype: str, device):
    """The torch dtype for ``dtype``: ``auto`` = fp16 on cuda, fp32 on cpu; fp16 on cpu is refused
    (slow, and some ops lack kernels)."""
    import torch

    if dtype not in ("auto", "fp16", "fp32"):
        raise ConfigError(f"unknown dtype {dtype!r}; valid: auto, fp16, fp32")
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype == "fp16" and device.type == "cpu":
        raise ConfigError("dtype fp16 on cpu is not supported; use --dtype fp32 (or auto) on cpu")
    return torch.float16 if dtype == "fp16" else torch.float32


def load_pretrained(cls, folder: Path, what: str, layout: str = PIPELINE_LAYOUT, dtype=None, **kwargs):
    """``cls.from_pretrained(folder, local_files_only=True, **kwargs)`` in ``dtype``, with loading
    failures (missing or broken component files) turned into a ConfigError naming the folder and the
    expected layout."""
    from diffusers.utils import deprecation_utils

    if dtype is not None:
        # diffusers renamed torch_dtype to dtype (the old name warns); older releases know only torch_dtype
        renamed = hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE")
        kwargs["dtype" if renamed else "torch_dtype"] = dtype
    try:
        return cls.from_pretrained(str(folder), local_files_only=True, **kwargs)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the {what} from {folder}: {exc}. Expected a diffusers layout: {layout}") from None


class DiffusionGenerator(Generator):
    """Base of the diffusers backends: device/dtype, prompts, identity and seeded generators."""

    def __init__(self, cfg: SynthConfig):
        super().__init__(cfg)

        if cfg.steps < 1:
            raise ConfigError(f"--steps must be at least 1, got {cfg.steps}")
        self.device = resolve_device(cfg.device)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        if self.device.type == "cpu":
            import torch

            # more threads than free cores makes torch's CPU kernels spin and crawl; DRSF_NUM_THREADS caps it
            torch.set_num_threads(default_num_threads())
        self.prompts = load_prompts(cfg.prompts)
        for domain in cfg.domains:  # a missing prompt should stop the run before weights load
            self.prompts.prompt(domain)
        self._model_id = ""
        self._folders: list[Path] = []
        self._hash: str | None = None
        self.pipe = None

    def _finish_loading(self, pipe, model_id: str, folders: list[Path]):
        if self.device.type != "cpu":  # pipelines load on the cpu
            pipe = pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)  # the runner's bar shows progress
        self.pipe, self._model_id, self._folders = pipe, model_id, folders

    def identity(self) -> dict:
        """The model folders (or repo ids) and the SHA-256 of their weight files (computed once)."""
        if self._hash is None:
            self._hash = weights_hash(*self._folders)
        return {"model": self._model_id, "model_hash": self._hash}

    def params(self) -> dict:
        """Steps and guidance of every diffusion backend; img2img adds strength."""
        return {"strength": None, "steps": self.cfg.steps, "guidance": self.cfg.guidance}

    def torch_generators(self, seeds: list[int]) -> list:
        """One seeded CPU ``torch.Generator`` per image: noise is drawn per image on the CPU, so an
        image depends on its own seed only (not on batch composition or device)."""
        import torch

        return [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]

    def negative(self, n: int) -> list[str] | None:
        """The prompt file's negative prompt repeated for a batch of ``n`` (None when there is none)."""
        neg = self.prompts.negative_prompt
        return [neg] * n if neg else None

    def close(self) -> None:
        """Drop the pipeline and free cached GPU memory."""
        import torch

        self.pipe = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def group_by_size(sizes: list[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Indices grouped into runs of equal output size, each at most ``batch_size`` long (a pipeline
    call needs one size); order within a group is kept."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, size in enumerate(sizes):
        groups.setdefault(tuple(size), []).append(i)
    out = []
    for idx in groups.values():
        out += [idx[k:k + batch_size] for k in range(0, len(idx), batch_size)]
    return out
