"""Run configuration: frozen dataclasses, YAML loading and dotted ``key=value`` overrides.

One ``RunConfig`` describes one training run; ``drsf train``, ``drsf_kit.train.fit`` and the notebooks'
parameters cells use the same dotted names (``variant``, ``seed``, ``data.root``, ``train.max_steps``,
``model.hparams.w_adv`` ...). Values given as strings are parsed by the field's type, an unknown key is
an error that lists the valid keys of its section, and names (variant, optimizer, schedule, protocol)
are checked against their lists.

Example::

    cfg = load_config("configs/mini_det.yaml", ["variant=drsf", "seed=1", "train.max_steps=200"])
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

from drsf_kit.data import voc
from drsf_kit.data.check import find_domains
from drsf_kit.data.classes import PSEUDO_DOMAINS, SOURCE_DOMAIN, TARGET_DOMAINS
from drsf_kit.data.dwd import PROTOCOLS, split_for, split_ids
from drsf_kit.errors import ConfigError, DataError
from drsf_kit.models import VARIANTS, VariantSpec, get_variant
from drsf_kit.models.dfdr import DFDRHparams
from drsf_kit.models.hparams import pin_method, resolve_hparams
from drsf_kit.models.mdsf import MDSFHparams

# Where the demo's things live, relative to the project root: the one definition every entry point reads.
DEFAULT_DATA_ROOT = "data/mini-weather"  # the embedded benchmark (`drsf data make-mini`)
DEFAULT_SYNTH_ROOT = "data/synth/procedural"  # its procedural pseudo-domains (`drsf synth`)
DEFAULT_RUNS_DIR = "runs/demo"  # the demo's run folders (`drsf demo`, the notebooks, the app)

TASKS = ("det", "seg")
DATA_FORMATS = ("dwd", "gtav")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine", "onecycle")
AMP_DTYPES = ("auto", "bf16", "fp16")
LR_SCALINGS = ("none", "linear", "sqrt")


@dataclass(frozen=True)
class DataConfig:
    """Where the source images, the generated pseudo-domains and the real targets live."""

    root: str = DEFAULT_DATA_ROOT  # real data folder (DWD layout; mini-weather adds masks): source + targets
    format: str = "dwd"  # dwd: a DWD-layout folder per domain | gtav: GTAV source, Cityscapes-style targets
    target_roots: dict = field(default_factory=dict)  # domain -> folder, for targets not under root
    source_domain: str = SOURCE_DOMAIN  # the one labelled real domain the model trains on
    source_split: str = "train"  # split of the source domain used for training (its `test` split is scored)
    synth_root: str = DEFAULT_SYNTH_ROOT  # generated pseudo-domains: <synth_root>/<domain>/manifest.jsonl
    synth_domains: tuple[str, ...] = PSEUDO_DOMAINS  # ids 1..K (data/classes.py owns the default order)
    eval_domains: tuple[str, ...] = TARGET_DOMAINS  # real target domains of this dataset (never trained on)
    protocol: str = "all_images"  # which split of each target is scored: all_images | drsf_code (docs/evaluation.md)
    num_workers: int = 0  # DataLoader workers; 0 keeps everything in one process (2-core machines)


@dataclass(frozen=True)
class ModelConfig:
    """Which network to build; the variant decides which blocks it carries."""

    profile: str = "mini"  # network size: `mini` for the CPU benchmark, larger ones for GPU recipes
    min_size: int | None = None  # detector short-side resize; None = the profile's default
    max_size: int | None = None  # detector long-side cap; None = the profile's default
    pretrained_backbone: str | None = None  # local backbone weights file (nothing is downloaded)
    init_weights: str | None = None  # a whole model's state_dict to start from (same-name, same-shape keys)
    frozen_bn: bool | None = None  # detection ResNets: frozen BatchNorm; None = frozen iff pretrained_backbone
    dfdr_stage: str | None = None  # backbone stage DFDR follows; None = the kit's default (layer2)
    mdsf_stage: str | None = None  # features MDSF mixes; None = the kit's default (backbone output)
    hparams: dict = field(default_factory=dict)  # overrides of models.default_hparams(variant, task)


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation schedule and the training loop's bookkeeping."""

    max_steps: int = 600  # optimizer steps (iterations), the unit of every schedule below
    batch_source: int = 2  # B source images per step; each gets one twin, so 2B images when synth is used
    lr: float = 0.02  # peak learning rate (after warm-up)
    optimizer: str = "sgd"  # sgd (detection recipes) | adamw (small models from scratch)
    momentum: float = 0.9  # SGD momentum (AdamW uses it as beta1)
    weight_decay: float = 1e-4  # L2 on weights (decoupled for AdamW)
    warmup_steps: int = 50  # linear warm-up length; for onecycle 0 means 30% of max_steps
    warmup_factor: float = 0.001  # learning-rate factor at step 0 of the warm-up
    schedule: str = "cosine"  # after warm-up: step (x lr_gamma at lr_steps) | cosine | onecycle
    lr_steps: tuple[int, ...] = ()  # milestones of the step schedule
    lr_gamma: float = 0.1  # factor applied at each milestone
    grad_clip: float = 10.0  # max gradient norm; 0 disables (DANN-style heads can spike early)
    amp: bool = True  # autocast + GradScaler on CUDA; ignored on CPU, where it only slows things down
    amp_dtype: str = "auto"  # auto: bf16 where the GPU has it natively (sm80+), else fp16 | bf16 | fp16 (GradScaler)
    accumulate: int = 1  # split each step's batch_source images into this many forward/backward passes (memory)
    cudnn_benchmark: bool = True  # CUDA: let cuDNN pick the fastest kernels for the (fixed) crop size
    channels_last: bool = False  # CUDA: NHWC memory layout (faster convolutions on tensor cores)
    compile: bool = False  # wrap the training forward in torch.compile (first steps are slow while it compiles)
    hflip: float = 0.5  # probability of a horizontal flip (the same flip for an image and its twin)
    crop_min_scale: float = 1.0  # random crop of at least this side fraction, resized back; 1 disables
    crop_size: tuple[int, ...] = ()  # fixed (h, w) random crop kept at full resolution (seg); () = whole image
    checkpoint_every: int = 200  # write checkpoints/last.pt every N steps (and always at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept; a resume falls back to an older one if the newest is bad
    eval_every: int = 0  # score the eval domains every N steps into metrics.jsonl; 0 = only at the end
    log_every: int = 10  # one metrics.jsonl row (and TensorBoard scalars) every N steps
    tensorboard: bool = True  # write TensorBoard event files next to metrics.jsonl when available
    sync_bn: bool = False  # several processes: BatchNorm statistics over the global batch, not each slice
    lr_scaling: str = "none"  # several processes: lr follows the global batch: none | linear | sqrt
    reference_batch: int = 0  # global batch (source images) `lr` was tuned for; 0 = batch_source (1 process)
    find_unused_parameters: bool = False  # DDP: only needed when a step leaves some parameters without gradient
    debug_nan_at_step: int = 0  # test hook: turn the first loss term into NaN at this step (0 = off)


@dataclass(frozen=True)
class EvalConfig:
    """What the end-of-run evaluation and `drsf eval` score."""

    domains: tuple[str, ...] = ()  # domains to score; empty = the source test split + data.eval_domains
    protocol: str = ""  # target split protocol; empty = data.protocol
    max_images: int = 0  # cap on images per domain (quick looks); 0 = all
    batch_size: int = 4  # images per inference batch
    score_threshold: float = 0.0  # detections below this score are dropped before scoring (0 keeps all)


@dataclass(frozen=True)
class RunConfig:
    """One training run: task, variant, seed, where it goes, and the four sections."""

    task: str = "det"  # det (Faster R-CNN, boxes) | seg (DeepLabV3-style, masks)
    variant: str = "drsf"  # source_only | naive_synth | dfdr | mdsf | drsf (models.VARIANTS)
    seed: int = 0  # seeds model init, sampling order, twin draws, MDSF mixing
    output_dir: str = "runs"  # runs go to <output_dir>/<run_name>/
    run_name: str = ""  # folder name; empty = <task>-<variant>-<seed>
    device: str = "auto"  # auto = cuda when present, else cpu
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @cached_property
    def spec(self) -> VariantSpec:
        """The variant's spec (which blocks, whether it trains on twins): resolved once, read everywhere."""
        return get_variant(self.variant)

    @cached_property
    def hparams(self) -> types.MappingProxyType:
        """The variant's resolved hyperparameters (defaults + ``model.hparams``; without a ``method``
        the default design), read-only; resolved once and never saved (``config_to_dict`` saves ``model.hparams``)."""
        return types.MappingProxyType(resolve_hparams(self.variant, self.task, self.model.hparams))

    def __getstate__(self) -> dict:
        """Pickle and deepcopy the fields only: ``spec`` and ``hparams`` are resolved again on first use."""
        return {k: v for k, v in self.__dict__.items() if k not in ("spec", "hparams")}

    @property
    def name(self) -> str:
        """The run folder's name."""
        return self.run_name or f"{self.task}-{self.variant}-{self.seed}"

    @property
    def run_dir(self) -> Path:
        """``<output_dir>/<name>``."""
        return Path(self.output_dir) / self.name

    def eval_domains(self) -> tuple[str, ...]:
        """Domains the evaluation scores: ``eval.domains`` or the source + ``data.eval_domains``."""
        if self.eval.domains:
            return tuple(self.eval.domains)
        return (self.data.source_domain,) + tuple(d for d in self.data.eval_domains if d != self.data.source_domain)

    def eval_protocol(self) -> str:
        """The target-split protocol the evaluation uses."""
        return self.eval.protocol or self.data.protocol


# ----------------------------------------------------------------------------------------------- parsing
def _parse_scalar_text(text: str) -> Any:
    """A command-line value as YAML would read it (numbers, booleans, null, lists)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (from YAML or a ``key=value`` string) to the field type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
            return None
        return _coerce(value, non_none[0], key)
    if tp is str:
        if value is None:
            return ""
        if isinstance(value, (list, dict)):
            raise ConfigError(f"config key {key!r} expects a string, got {value!r}")
        return str(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "yes", "on", "1"):
            return True
        if text in ("false", "no", "off", "0"):
            return False
        raise ConfigError(f"config key {key!r} expects true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"config key {key!r} expects an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            number = float(str(value).replace("_", ""))
        except ValueError:
            raise ConfigError(f"config key {key!r} expects an integer, got {value!r}") from None
        if not number.is_integer():
            raise ConfigError(f"config key {key!r} expects an integer, got {value!r}")
        return int(number)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"config key {key!r} expects a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key {key!r} expects a number, got {value!r}") from None
        if not math.isfinite(number):  # nan would pass every range check below and fail deep in torch
            raise ConfigError(f"config key {key!r} expects a finite number, got {value!r}")
        return number
    if origin is tuple:
        item_type = args[0] if args else str
        if value is None:
            return ()
        if isinstance(value, str):
            text = value.strip()
            parsed = _parse_scalar_text(text) if text.startswith("[") else None
            value = parsed if isinstance(parsed, list) else [v.strip() for v in text.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(_coerce(v, item_type, key) for v in value)
    if tp is dict or origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} expects a mapping, got {value!r}")
        return dict(value)
    raise ConfigError(f"config key {key!r} has an unsupported type {tp!r}")  # pragma: no cover


def _build(cls: type, values: dict, prefix: str) -> Any:
    """Instantiate the dataclass ``cls`` from a (possibly nested) mapping, checking every key."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            section = prefix.rstrip(".") or "top level"
            raise ConfigError(
                f"unknown config key {dotted!r}; valid keys of {section}: {', '.join(names)}"
            )
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise ConfigError(f"config key {dotted!r} must be a section (mapping), got {value!r}")
            kwargs[key] = _build(tp, value, f"{dotted}.")
        else:
            kwargs[key] = _coerce(value, tp, dotted)
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, text: str) -> None:
    """Put one ``a.b=v`` override into the nested mapping ``tree`` (values still unparsed)."""
    parts = [p for p in dotted.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {dotted!r} has an empty key")
    node = tree
    cls: Any = RunConfig
    for i, part in enumerate(parts[:-1]):
        # model.hparams.<name>=v: the last level is a free-form mapping of hyper-parameters
        if cls is not None and dataclasses.is_dataclass(cls):
            names = [f.name for f in dataclasses.fields(cls)]
            if part not in names:
                section = ".".join(parts[:i]) or "top level"
                raise ConfigError(f"unknown config key {'.'.join(parts[: i + 1])!r}; "
                                  f"valid keys of {section}: {', '.join(names)}")
            hints = typing.get_type_hints(cls)
            nxt = hints[part]
            cls = nxt if dataclasses.is_dataclass(nxt) else None
            if cls is None and not (nxt is dict or typing.get_origin(nxt) is dict):
                raise ConfigError(f"config key {'.'.join(parts[: i + 1])!r} is a value, not a section")
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    leaf = parts[-1]
    if cls is None:  # inside a free-form mapping (hparams): keep YAML's reading of the value
        node[leaf] = _parse_scalar_text(text)
    else:
        # the raw text goes on: _coerce parses it by the field's type, so `run_name=007` stays a string
        tp = typing.get_type_hints(cls).get(leaf)
        is_map = tp is dict or typing.get_origin(tp) is dict
        node[leaf] = _parse_scalar_text(text) if is_map else text


def _merge(base: dict, extra: dict) -> dict:
    """Recursive dict merge (``extra`` wins); hparams mappings merge key by key."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(overrides: Iterable[str]) -> dict:
    """Turn ``["a.b=v", ...]`` into a nested mapping of unparsed values (checked against the schema)."""
    tree: dict = {}
    for item in overrides or ():
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.max_steps=100)")
        key, text = item.split("=", 1)
        _set_dotted(tree, key, text)
    return tree


def config_from_dict(values: dict, overrides: Iterable[str] = (), validate: bool = True) -> RunConfig:
    """Build a ``RunConfig`` from a nested mapping plus dotted overrides."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a mapping of keys to values, got {type(values).__name__}")
    cfg = _build(RunConfig, _merge(values, parse_overrides(overrides)), "")
    if validate:
        validate_config(cfg)
    return cfg


def _unique_key_loader():
    """A ``yaml.SafeLoader`` subclass whose mappings refuse a key given twice (plain YAML keeps the last)."""
    import yaml
    from yaml.constructor import ConstructorError

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                self.flatten_mapping(node)  # merge keys (<<) first: a merged key may be overridden
                seen: dict = {}
                for key_node, _ in node.value:
                    key = self.construct_object(key_node, deep=True)
                    line = key_node.start_mark.line + 1
                    try:
                        first = seen.get(key)
                    except TypeError:  # an unhashable key: the base class says so
                        break
                    if first is not None:
                        raise ConstructorError(None, None, f"duplicate key {key!r} on line {line} "
                                                           f"(first given on line {first})", None)
                    seen[key] = line
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def read_yaml_mapping(path: str | Path, what: str = "config") -> dict:
    """The mapping a YAML file holds, refusing (``ConfigError`` naming the file) a missing file, bytes
    that are not UTF-8, invalid YAML, a key given twice in one mapping, and a top level that is no mapping."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} file not found")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line} is not UTF-8 text (byte 0x{raw[exc.start]:02x}); "
                          f"save the file as UTF-8") from None
    try:
        values = yaml.load(text, Loader=_unique_key_loader()) or {}
    except yaml.YAMLError as exc:
        problem = " ".join(str(exc).split())
        raise ConfigError(f"{path}: not valid YAML ({problem})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a {what} must be a mapping of keys to values")
    return values


def load_config(path: str | Path | None = None, overrides: Iterable[str] = (), validate: bool = True) -> RunConfig:
    """Read a YAML config (or start from the defaults when ``path`` is None) and apply overrides.

    Args:
        path: YAML file with top-level keys and the sections ``data``, ``model``, ``train``, ``eval``.
        overrides: dotted ``key=value`` strings, e.g. ``["variant=drsf", "train.max_steps=100"]``.
        validate: check names (task, variant, optimizer, schedule, protocol) and ranges.

    Returns:
        The frozen ``RunConfig``. Raises ``ConfigError`` naming the file or key and the problem.
    """
    values: dict = {}
    if path is not None:
        path = Path(path)
        values = read_yaml_mapping(path, what="config")
    try:
        return config_from_dict(values, overrides, validate=validate)
    except ConfigError as exc:
        if path is not None and str(path) not in str(exc):
            raise ConfigError(f"{path}: {exc}") from None
        raise


def config_to_dict(cfg: RunConfig) -> dict:
    """A JSON-ready nested mapping of ``cfg`` (tuples become lists), as a run folder saves it.

    ``model.hparams`` names the DRSF design the blocks are built with (``pin_method``), so a saved run
    rebuilds the same model after the kit's default design changes, and a run saved under another
    default compares as another config.
    """
    out = dataclasses.asdict(cfg)
    out["model"]["hparams"] = pin_method(cfg.variant, out["model"]["hparams"])
    return out


def with_overrides(cfg: RunConfig, overrides: Iterable[str]) -> RunConfig:
    """A copy of ``cfg`` with dotted ``key=value`` overrides applied (notebooks, sweeps)."""
    # the plain mapping: a pinned method would follow a variant override onto a variant without blocks
    return config_from_dict(dataclasses.asdict(cfg), overrides)


def _check_choice(value: str, valid: Iterable[str], key: str) -> None:
    valid = tuple(valid)
    if value not in valid:
        raise ConfigError(f"unknown {key} {value!r}; valid: {', '.join(valid)}")


def _check_hparam_types(hparams: dict) -> None:
    """Each ``model.hparams`` value must have its block field's type (``DFDRHparams``/``MDSFHparams``)."""
    types_ = {**typing.get_type_hints(DFDRHparams), **typing.get_type_hints(MDSFHparams)}
    for key, value in hparams.items():
        if key in types_:
            dotted = f"model.hparams.{key}"
            if types_[key] is str and not isinstance(value, str):
                raise ConfigError(f"config key {dotted!r} expects a string, got {value!r}")
            _coerce(value, types_[key], dotted)  # raises for 'abc' where a number is due, nan, ...


def _check_ranges(cfg: RunConfig) -> None:
    """The numeric ranges no run can use: each a ``ConfigError`` naming the key, the range and the value.

    A negative warm-up factor or weight decay would train the wrong way without an error, a negative
    clip would switch clipping off silently; the others would fail in the middle of a run.
    """
    t, e = cfg.train, cfg.eval
    checks = [
        ("train.warmup_factor", t.warmup_factor, 0.0 <= t.warmup_factor <= 1.0, "in [0, 1]"),
        ("train.momentum", t.momentum, 0.0 <= t.momentum < 1.0, "in [0, 1)"),
        ("train.weight_decay", t.weight_decay, t.weight_decay >= 0.0, ">= 0"),
        ("train.lr_gamma", t.lr_gamma, 0.0 < t.lr_gamma <= 1.0, "in (0, 1]"),
        ("train.grad_clip", t.grad_clip, t.grad_clip >= 0.0, ">= 0 (0 disables clipping)"),
        ("data.num_workers", cfg.data.num_workers, cfg.data.num_workers >= 0, ">= 0"),
        ("eval.max_images", e.max_images, e.max_images >= 0, ">= 0 (0 scores every image)"),
        ("eval.batch_size", e.batch_size, e.batch_size >= 1, "at least 1"),
        ("eval.score_threshold", e.score_threshold, 0.0 <= e.score_threshold <= 1.0, "in [0, 1]"),
    ]
    for key in ("min_size", "max_size"):
        value = getattr(cfg.model, key)
        if value is not None:
            checks.append((f"model.{key}", value, value >= 1, "at least 1 pixel (or null for the profile's)"))
    if cfg.model.min_size is not None and cfg.model.max_size is not None:
        checks.append(("model.max_size", cfg.model.max_size, cfg.model.max_size >= cfg.model.min_size,
                       f"at least model.min_size ({cfg.model.min_size})"))
    if t.lr_steps:
        checks.append(("train.lr_steps", list(t.lr_steps), min(t.lr_steps) >= 1, "steps of at least 1"))
    for key, value, ok, wanted in checks:
        if not ok:
            raise ConfigError(f"{key} must be {wanted}, got {value!r}")


def validate_config(cfg: RunConfig) -> None:
    """Check names and ranges; raises ``ConfigError`` listing the valid choices."""
    _check_choice(cfg.task, TASKS, "task")
    _check_choice(cfg.variant, VARIANTS, "variant")
    _check_choice(cfg.train.optimizer, OPTIMIZERS, "train.optimizer")
    _check_choice(cfg.train.schedule, SCHEDULES, "train.schedule")
    _check_choice(cfg.train.amp_dtype, AMP_DTYPES, "train.amp_dtype")
    _check_choice(cfg.train.lr_scaling, LR_SCALINGS, "train.lr_scaling")
    _check_choice(cfg.data.protocol, PROTOCOLS, "data.protocol")
    _check_choice(cfg.data.format, DATA_FORMATS, "data.format")
    if cfg.data.format == "gtav" and cfg.task != "seg":
        raise ConfigError("data.format 'gtav' holds segmentation labels only; use task=seg")
    if cfg.eval.protocol:
        _check_choice(cfg.eval.protocol, PROTOCOLS, "eval.protocol")
    if cfg.device not in ("auto", "cpu") and not cfg.device.startswith(("cuda", "mps")):
        raise ConfigError(f"unknown device {cfg.device!r}; valid: auto, cpu, cuda, cuda:N")
    if cfg.seed < 0:  # numpy's seed sequences take no negative entropy
        raise ConfigError(f"seed must be 0 or more, got {cfg.seed}")
    positive = {"train.max_steps": cfg.train.max_steps, "train.batch_source": cfg.train.batch_source}
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} must be at least 1, got {value}")
    if cfg.train.lr <= 0:
        raise ConfigError(f"train.lr must be positive, got {cfg.train.lr}")
    if cfg.train.accumulate < 1 or cfg.train.batch_source % cfg.train.accumulate:
        raise ConfigError(f"train.accumulate must be at least 1 and divide train.batch_source "
                          f"({cfg.train.batch_source}), got {cfg.train.accumulate}")
    if not 0.0 < cfg.train.crop_min_scale <= 1.0:
        raise ConfigError(f"train.crop_min_scale must be in (0, 1], got {cfg.train.crop_min_scale}")
    if cfg.train.crop_size and (len(cfg.train.crop_size) != 2 or min(cfg.train.crop_size) < 1):
        raise ConfigError(f"train.crop_size must be [height, width] in pixels, got {list(cfg.train.crop_size)}")
    if not 0.0 <= cfg.train.hflip <= 1.0:
        raise ConfigError(f"train.hflip must be a probability in [0, 1], got {cfg.train.hflip}")
    if list(cfg.train.lr_steps) != sorted(cfg.train.lr_steps):
        raise ConfigError(f"train.lr_steps must be increasing, got {list(cfg.train.lr_steps)}")
    for key in ("checkpoint_every", "eval_every", "log_every", "warmup_steps", "debug_nan_at_step", "reference_batch"):
        if getattr(cfg.train, key) < 0:
            raise ConfigError(f"train.{key} must be >= 0, got {getattr(cfg.train, key)}")
    _check_ranges(cfg)

    cfg.hparams  # noqa: B018  (resolving is the check: a key the variant does not use is an error)
    _check_hparam_types(cfg.model.hparams)
    if cfg.train.keep_checkpoints < 1:
        raise ConfigError(f"train.keep_checkpoints must be at least 1, got {cfg.train.keep_checkpoints}")
    if len(set(cfg.data.synth_domains)) != len(cfg.data.synth_domains):
        raise ConfigError(f"data.synth_domains lists a domain twice: {list(cfg.data.synth_domains)}")
    if "/" in cfg.name or cfg.name in (".", ".."):
        raise ConfigError(f"run_name {cfg.run_name!r} must be a plain folder name")


def check_paths(cfg: RunConfig, need_synth: bool | None = None) -> None:
    """Raise ``ConfigError`` when the data folder (or the synthetic folder the variant needs) is missing."""
    root = Path(cfg.data.root)
    if not root.is_dir():
        raise ConfigError(
            f"data.root {str(root)!r} does not exist; build the embedded data with "
            f"`drsf data make-mini --out {root}` or point data.root=PATH at a dataset folder"
        )
    if need_synth is None:
        need_synth = cfg.spec.use_synth
    if need_synth:
        synth = Path(cfg.data.synth_root)
        if not synth.is_dir():
            raise ConfigError(
                f"data.synth_root {str(synth)!r} does not exist; variant {cfg.variant!r} trains on generated "
                f"pseudo-domains: run `drsf synth --data {root} --out {synth.parent}` first"
            )
        missing = [d for d in cfg.data.synth_domains if not (synth / d).is_dir()]
        if missing:
            raise ConfigError(
                f"data.synth_root {str(synth)!r} has no folder for pseudo-domain(s) {', '.join(missing)}; "
                f"found: {', '.join(sorted(p.name for p in synth.iterdir() if p.is_dir())) or 'none'}"
            )
    check_splits(cfg)


def check_splits(cfg: RunConfig) -> None:
    """Every domain a run reads resolves to a folder and its split lists at least one image.

    The source domain's ``data.source_split`` (what training draws from) and each evaluated domain's
    split (per protocol) are read from their ``ImageSets/Main`` lists, so a misspelt domain or an empty
    list is refused before training rather than at the end-of-run evaluation. Raises ``ConfigError``
    (an unknown domain) or ``DataError`` naming the split file.
    """
    protocol = cfg.eval_protocol()
    wanted = [(cfg.data.source_domain, cfg.data.source_split, "data.source_domain")]
    key = "eval.domains" if cfg.eval.domains else "data.eval_domains"
    wanted += [(d, None, key) for d in cfg.eval_domains()]
    for domain, split, key in wanted:
        root = Path(cfg.data.target_roots.get(domain, cfg.data.root))
        if (cfg.task == "seg" and domain == "cityscapes") or (cfg.data.format == "gtav" and domain == cfg.data.source_domain):
            if not root.is_dir():  # not DWD layout: the dataset classes check the rest of their layout
                raise ConfigError(f"{key}: domain {domain!r} is read from {str(root)!r}, which does not exist")
            continue
        try:
            voc_root = voc.find_voc_root(root, domain)
        except DataError:
            found = ", ".join(find_domains(root)) if root.is_dir() else "none"
            raise ConfigError(f"{key} names domain {domain!r}, which has no folder under {str(root)!r} "
                              f"(domains found there: {found or 'none'})") from None
        # what train.evaluate.eval_split scores: the source's test split, a target's per protocol
        split = split or ("test" if domain == cfg.data.source_domain else split_for(domain, protocol))
        if not split_ids(voc_root, split):
            listed = voc_root / "ImageSets" / "Main" / f"{split}.txt"
            raise DataError(listed if split != "all" else listed.parent,
                            f"split {split!r} of domain {domain!r} lists no images ({key})")
