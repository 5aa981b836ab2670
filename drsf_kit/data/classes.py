"""Class lists, domain names and label maps: the one place they are defined.

Detection labels follow torchvision: 0 is background, DWD class ``k`` (0-based in ``DWD_CLASSES``)
has label ``k + 1``. Segmentation masks hold Cityscapes *train ids* 0..18, with 255 = ignore.
"""

from __future__ import annotations

# Diverse Weather Dataset (Wu & Deng, CVPR 2022), in the dataset's own order.
DWD_CLASSES: tuple[str, ...] = ("bus", "bike", "car", "motor", "person", "rider", "truck")
NUM_DWD_CLASSES = len(DWD_CLASSES)

SOURCE_DOMAIN = "daytime_clear"
TARGET_DOMAINS: tuple[str, ...] = ("daytime_foggy", "dusk_rainy", "night_rainy", "night_sunny")
DWD_DOMAINS: tuple[str, ...] = (SOURCE_DOMAIN,) + TARGET_DOMAINS

# The pseudo-target domains a run generates and trains on, in the order of their domain ids 1..K (the
# source is id 0). This order, not TARGET_DOMAINS' table order, numbers the domain discriminator's outputs,
# so config.py, synth/ and every model read it from here; a trained model carries its own copy in
# ``model.domain_names`` (source first), which is what anything labelling those outputs must use.
PSEUDO_DOMAINS: tuple[str, ...] = ("daytime_foggy", "dusk_rainy", "night_sunny", "night_rainy")


def model_domain_names(synth_domains=PSEUDO_DOMAINS, source_domain: str = SOURCE_DOMAIN) -> tuple[str, ...]:
    """Names of a model's domain ids: the source (id 0), then the pseudo-domains (ids 1..K) in run order."""
    return (str(source_domain), *(str(d) for d in synth_domains))

# Short names used in tables and figure legends.
DOMAIN_SHORT = {
    "daytime_clear": "DC",
    "daytime_foggy": "DF",
    "dusk_rainy": "DR",
    "night_rainy": "NR",
    "night_sunny": "NS",
}

# One colour per domain, shared by every plot and notebook so domains read the same everywhere.
DOMAIN_COLORS = {
    "daytime_clear": "#1f77b4",
    "daytime_foggy": "#7f7f7f",
    "dusk_rainy": "#ff7f0e",
    "night_rainy": "#9467bd",
    "night_sunny": "#2ca02c",
}

# Cityscapes: the 19 evaluation classes, indexed by train id.
CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)
NUM_SEG_CLASSES = len(CITYSCAPES_CLASSES)
IGNORE_INDEX = 255

# Cityscapes label id -> train id (gtFine *_labelIds.png); every id not listed maps to 255.
# GTAV ships its labels in the same label-id space.
CITYSCAPES_ID_TO_TRAIN_ID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}

# The Cityscapes colour palette by train id (for overlays).
CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)

# DWD class -> Cityscapes train id (the mini-weather masks paint objects with these).
DWD_TO_CITYSCAPES_TRAIN_ID = {
    "bus": 15, "bike": 18, "car": 13, "motor": 17, "person": 11, "rider": 12, "truck": 14,
}


def label_lut():
    """A 256-entry uint8 lookup table mapping Cityscapes label ids to train ids (255 elsewhere)."""
    import numpy as np

    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label_id, train_id in CITYSCAPES_ID_TO_TRAIN_ID.items():
        lut[label_id] = train_id
    return lut
