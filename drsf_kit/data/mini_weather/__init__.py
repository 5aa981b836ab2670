"""The embedded mini-weather benchmark: a small, deterministic stand-in for the Diverse Weather Dataset.

A procedural renderer in four modules, one idea each:

- ``objects``: the object classes' shapes and sizes (cars, buses, people, ...);
- ``scene``: a street scene in clear daylight (road, buildings, objects, depth, lights, mask);
- ``weather``: the same scene under fog, dusk and rain, night, night and rain (depth-aware);
- ``build``: ``make_mini_weather`` writes the five domains in the DWD layout, ``holdout_split`` cuts a
  validation split off the source training images.

``python -m drsf_kit.data.mini_weather FIGURE.png [SEED]`` draws one scene in every domain.
"""

from drsf_kit.data.mini_weather.build import (
    JPEG_QUALITY,
    META_NAME,
    MINI_WEATHER_VERSION,
    MiniWeatherSpec,
    Scene,
    SceneObject,
    domains_figure,
    holdout_split,
    image_id,
    image_rngs,
    make_mini_weather,
    render_domain,
    render_scene,
    voc_xml,
)

__all__ = [
    "JPEG_QUALITY", "META_NAME", "MINI_WEATHER_VERSION", "MiniWeatherSpec", "Scene", "SceneObject", "domains_figure",
    "holdout_split", "image_id", "image_rngs", "make_mini_weather", "render_domain", "render_scene", "voc_xml",
]
