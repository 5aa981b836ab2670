"""Building the mini-weather benchmark: scenes, weather, DWD-layout files, masks and the held-out split.

``make_mini_weather`` renders procedural street scenes (``scene``, with the objects of ``objects``) and writes them in the
real DWD layout: clear daytime as the labelled source, and daytime-foggy, dusk-rainy, night-rainy and
night-sunny as the unseen targets, each rendered from *other* scenes with depth-aware weather
(``weather``). Every image also gets a Cityscapes-train-id mask, so detection and
segmentation can both be studied offline in minutes.

Box convention: the XML holds VOC boxes, 1-based and inclusive. An object whose visible pixels span
columns ``c0..c1`` and rows ``r0..r1`` (0-based) is written ``xmin=c0+1, ymin=r0+1, xmax=c1+1,
ymax=r1+1``; a reader that does ``(xmin - 1, ymin - 1, xmax, ymax)`` gets the exact pixel-edge box
``(c0, r0, c1 + 1, r1 + 1)`` in torchvision's 0-based ``xyxy``.

Determinism: the image with index ``i`` of domain ``d`` draws all its randomness from
``numpy.random.Generator(PCG64(SeedSequence([seed, d, i])))``, so a build is byte-identical for the same
parameters, whatever the number of worker processes.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from drsf_kit.data.classes import (
    CITYSCAPES_PALETTE,
    DOMAIN_SHORT,
    DWD_CLASSES,
    DWD_DOMAINS,
    SOURCE_DOMAIN,
    TARGET_DOMAINS,
)
from drsf_kit.data.mini_weather.scene import (
    MiniWeatherSpec,
    Scene,
    SceneObject,
    render_scene,
)
from drsf_kit.data.mini_weather.weather import render_domain
from drsf_kit.errors import ConfigError, DataError
from drsf_kit.utils.io import atomic_save_image, atomic_write_json, atomic_write_text
from drsf_kit.utils.runtime import default_num_threads

MINI_WEATHER_VERSION = 1  # bump when the renderer changes what a given seed produces
JPEG_QUALITY = 92
META_NAME = "mini_weather.json"

__all__ = [
    "JPEG_QUALITY", "MINI_WEATHER_VERSION", "MiniWeatherSpec", "Scene", "SceneObject", "domains_figure", "holdout_split",
    "image_id", "image_rngs", "make_mini_weather", "render_domain", "render_scene", "voc_xml",
]


def image_id(domain: str, index: int) -> str:
    """The file stem of image ``index`` (0-based) of ``domain``, e.g. ``dc_000001``."""
    return f"{DOMAIN_SHORT[domain].lower()}_{index + 1:06d}"


def image_rngs(seed: int, domain: str, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent (scene, weather) generators of one image, derived from (seed, domain, index)."""
    ss = np.random.SeedSequence([int(seed), DWD_DOMAINS.index(domain), int(index)])
    scene_ss, weather_ss = ss.spawn(2)
    return np.random.Generator(np.random.PCG64(scene_ss)), np.random.Generator(np.random.PCG64(weather_ss))


def voc_xml(stem: str, width: int, height: int, objects: list[SceneObject], domain: str) -> str:
    """A Pascal VOC annotation (1-based inclusive boxes, see the module docstring) as text."""
    lines = [
        "<annotation>", "  <folder>VOC2007</folder>", f"  <filename>{stem}.jpg</filename>",
        f"  <source><database>mini-weather {domain}</database></source>",
        f"  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
        "  <segmented>1</segmented>",
    ]
    for obj in objects:
        x0, y0, x1, y1 = (round(v) for v in obj.box)
        lines += [
            "  <object>", f"    <name>{obj.name}</name>", "    <pose>Unspecified</pose>",
            f"    <truncated>{int(obj.truncated)}</truncated>", f"    <difficult>{int(obj.difficult)}</difficult>",
            f"    <bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox>",
            "  </object>",
        ]
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


def _voc_dir(out: Path, domain: str) -> Path:
    return out / domain / "VOC2007"


def _render_one(task: tuple) -> tuple[str, str, list[tuple[str, bool]]]:
    """Render and write one image, its mask and its annotation; returns (domain, id, objects)."""
    out, seed, domain, index, height, width, spec = task
    scene_rng, weather_rng = image_rngs(seed, domain, index)
    # A minimum quota: image i must show class i mod 7, so every class is in every split of >= 7 images.
    scene = render_scene(scene_rng, height, width, spec, force_class=DWD_CLASSES[index % len(DWD_CLASSES)])
    image = render_domain(scene, domain, weather_rng)
    stem, voc = image_id(domain, index), _voc_dir(Path(out), domain)
    atomic_save_image(Image.fromarray(image, "RGB"), voc / "JPEGImages" / f"{stem}.jpg", quality=JPEG_QUALITY)
    atomic_save_image(Image.fromarray(scene.mask, "L"), voc / "SegmentationClass" / f"{stem}.png")
    atomic_write_text(voc / "Annotations" / f"{stem}.xml", voc_xml(stem, width, height, scene.objects, domain))
    return domain, stem, [(o.name, o.difficult) for o in scene.objects]


def _params(seed, n_train, n_test, n_target, height, width, spec: MiniWeatherSpec) -> dict:
    params = {"version": MINI_WEATHER_VERSION, "seed": seed, "n_train": n_train, "n_test": n_test,
              "n_target": n_target, "height": height, "width": width, "jpeg_quality": JPEG_QUALITY,
              "spec": asdict(spec)}
    return json.loads(json.dumps(params))  # tuples become lists, as they come back from the file


def _check_args(seed, n_train, n_test, n_target, height, width) -> None:
    for name, value in (("seed", seed), ("n_train", n_train), ("n_test", n_test), ("n_target", n_target)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"make_mini_weather: {name} must be a non-negative integer, got {value!r}")
    if n_train + n_test < 1:
        raise ConfigError("make_mini_weather: the source domain needs at least one image (n_train + n_test >= 1)")
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, (int, np.integer)) or value < 64 or value > 4096:
            raise ConfigError(f"make_mini_weather: {name} must be an integer in [64, 4096], got {value!r}")


def _prepare(out: Path, params: dict, overwrite: bool) -> bool:
    """Decide what to do with ``out``; returns True when a complete, matching build is already there."""
    meta_path = out / META_NAME
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(meta_path, f"unreadable mini-weather metadata ({exc}); delete the folder to rebuild") from None
        complete = bool(meta.get("complete"))
        if complete and meta.get("params") == params and not overwrite:
            if all((_voc_dir(out, d) / "ImageSets" / "Main" / "train.txt").exists() for d in DWD_DOMAINS):
                return True
        elif complete and not overwrite:
            old = meta.get("params", {})
            diff = sorted(k for k in set(old) | set(params) if old.get(k) != params.get(k))
            raise DataError(meta_path, f"holds a mini-weather build with other parameters (differ: {', '.join(diff)}); "
                                       "pass overwrite=True (drsf data make-mini --overwrite) to rebuild it")
        # an interrupted build, or overwrite: our own folders, safe to clear
        for domain in DWD_DOMAINS:
            if (out / domain).is_dir():
                shutil.rmtree(out / domain)
        return False
    occupied = [d for d in DWD_DOMAINS if (out / d).exists()]
    if occupied:
        raise DataError(out, f"already holds {', '.join(occupied)} but no {META_NAME}: it is not a mini-weather "
                             "build, refusing to write into it; choose another output folder")
    return False


def make_mini_weather(out, seed: int = 0, n_train: int = 800, n_test: int = 200, n_target: int = 200,
                      height: int = 180, width: int = 320, progress: bool = True, overwrite: bool = False,
                      workers: int | None = None, spec: MiniWeatherSpec | None = None) -> Path:
    """Render the mini-weather benchmark into ``out`` in the DWD layout; returns ``out``.

    Args:
        out: the dataset root; ``<out>/<domain>/VOC2007/...`` for the five DWD domains.
        seed: fixes every image (same seed and sizes give byte-identical files).
        n_train, n_test: source (daytime_clear) train and test images.
        n_target: images per target domain, all listed in both ``train.txt`` and ``test.txt``.
        height, width: image size.
        progress: show a progress bar.
        overwrite: rebuild even if ``out`` holds a complete build (with the same or other parameters).
        workers: processes (default: up to 2, one for small builds); the output does not depend on it.
        spec: scene difficulty knobs (``MiniWeatherSpec()`` by default).
    Returns:
        the dataset root as a ``Path``. A complete build with the same parameters is left as it is.
    """
    from tqdm.auto import tqdm

    _check_args(seed, n_train, n_test, n_target, height, width)
    spec = spec or MiniWeatherSpec()
    out = Path(out)
    params = _params(int(seed), int(n_train), int(n_test), int(n_target), int(height), int(width), spec)
    if _prepare(out, params, overwrite):
        return out
    atomic_write_json(out / META_NAME, {"name": "mini-weather", "complete": False, "params": params})
    counts = {SOURCE_DOMAIN: n_train + n_test, **{d: n_target for d in TARGET_DOMAINS}}
    tasks = [(str(out), int(seed), d, i, int(height), int(width), spec) for d in DWD_DOMAINS for i in range(counts[d])]
    for domain in DWD_DOMAINS:  # empty target domains still get their folders and (empty) split files
        for sub in ("Annotations", "JPEGImages", "SegmentationClass", "ImageSets/Main"):
            (_voc_dir(out, domain) / sub).mkdir(parents=True, exist_ok=True)
    if workers is None:
        workers = 1 if len(tasks) < 64 else min(2, default_num_threads())
    stats = {d: {"images": 0, "instances": dict.fromkeys(DWD_CLASSES, 0), "difficult": dict.fromkeys(DWD_CLASSES, 0)}
             for d in DWD_DOMAINS}
    if workers > 1:
        # fork: no re-import of the caller's script (spawn would re-run an unguarded one); the pool is
        # made before the progress bar so that no helper thread exists at fork time.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        pool = multiprocessing.get_context(method).Pool(workers)
        results = pool.imap(_render_one, tasks, chunksize=8)
    else:
        pool, results = None, map(_render_one, tasks)
    bar = tqdm(total=len(tasks), desc="mini-weather", unit="img", disable=not progress)
    try:
        for domain, _, objects in results:
            stats[domain]["images"] += 1
            for name, difficult in objects:
                stats[domain]["difficult" if difficult else "instances"][name] += 1
            bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    for domain in DWD_DOMAINS:
        ids = [image_id(domain, i) for i in range(counts[domain])]
        train, test = (ids[:n_train], ids[n_train:]) if domain == SOURCE_DOMAIN else (ids, ids)
        main = _voc_dir(out, domain) / "ImageSets" / "Main"
        atomic_write_text(main / "train.txt", "".join(f"{i}\n" for i in train))
        atomic_write_text(main / "test.txt", "".join(f"{i}\n" for i in test))
        stats[domain]["splits"] = {"train": len(train), "test": len(test)}
    atomic_write_json(out / META_NAME, {"name": "mini-weather", "complete": True, "params": params,
                                        "domains": stats})
    return out


def holdout_split(out, n_val: int, domain: str = SOURCE_DOMAIN) -> tuple[int, int]:
    """Split ``domain``'s ``train`` list into ``fit.txt`` (training) and ``val.txt`` (its last ``n_val`` ids).

    The protocol benchmark trains on ``fit`` and selects models on ``val`` plus the twins of ``val``
    (training-domain validation), so no target image is ever used for a choice. Returns (fit, val) sizes.
    """
    main = _voc_dir(Path(out), domain) / "ImageSets" / "Main"
    train_file = main / "train.txt"
    if not train_file.is_file():
        raise DataError(train_file, "no train split to hold validation images out of (build the data first)")
    ids = [i for i in train_file.read_text(encoding="utf-8").split() if i]
    if not 0 < n_val < len(ids):
        raise ConfigError(f"holdout_split: n_val must be in [1, {len(ids) - 1}] for {len(ids)} training ids, got {n_val}")
    atomic_write_text(main / "fit.txt", "".join(f"{i}\n" for i in ids[:-n_val]))
    atomic_write_text(main / "val.txt", "".join(f"{i}\n" for i in ids[-n_val:]))
    return len(ids) - n_val, n_val


def domains_figure(seed: int = 23, height: int = 180, width: int = 320):
    """One scene in all five domains plus its mask, as a matplotlib Figure (titles: domain names)."""
    import matplotlib.pyplot as plt

    scene = render_scene(seed, height, width, force_class="rider")
    panels = [(d, render_domain(scene, d, seed)) for d in DWD_DOMAINS]
    palette = np.zeros((256, 3), np.uint8)
    palette[: len(CITYSCAPES_PALETTE)] = CITYSCAPES_PALETTE
    panels.append(("mask (Cityscapes train ids)", palette[scene.mask]))
    fig, axes = plt.subplots(2, 3, figsize=(12, 4.9))
    for ax, (title, img) in zip(axes.ravel(), panels):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(title, fontsize=11)
        ax.axis("off")
    for obj in scene.objects:  # boxes on the clear image show what the detector is asked for
        x0, y0, x1, y1 = obj.box
        color = "yellow" if obj.difficult else "red"
        axes[0, 0].add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec=color, lw=1))
        axes[0, 0].text(x0, y0 - 2, obj.name, color=color, fontsize=6)
    fig.tight_layout()
    return fig
