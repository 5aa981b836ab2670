"""The ADE20K colour code that segmentation ControlNets read, and the Cityscapes -> ADE20K class map.

``lllyasviel/sd-controlnet-seg`` (and the ControlNet 1.1 seg models) were trained on masks drawn with
the 150-class ADE20K palette of the ADE20K benchmark (as shipped with MMSegmentation's ``ADE20KDataset``
and ControlNet's own annotator), so a layout drawn in Cityscapes colours reads as other classes (road
is (128, 64, 128) in Cityscapes, a colour ADE20K does not use; ADE20K road is (140, 140, 140)).
``CITYSCAPES_TO_ADE20K`` names, for each of the 19 Cityscapes train classes, the ADE20K class whose
colour is drawn. ADE20K has no rider or train class: riders are drawn as persons, trains as buses.
"""

from __future__ import annotations

import numpy as np

from drsf_kit.data.classes import CITYSCAPES_CLASSES

# ADE20K's 150 class names in index order (the first word of each entry of objectInfo150)
ADE20K_CLASSES = tuple("""
wall building sky floor tree ceiling road bed windowpane grass cabinet sidewalk person earth door table mountain
plant curtain chair car water painting sofa shelf house sea mirror rug field armchair seat fence desk rock wardrobe
lamp bathtub railing cushion base box column signboard chest counter sand sink skyscraper fireplace refrigerator
grandstand path stairs runway case pool pillow screen stairway river bridge bookcase blind coffee_table toilet
flower book hill bench countertop stove palm kitchen_island computer swivel_chair boat bar arcade_machine hovel
bus towel light truck tower chandelier awning streetlight booth television airplane dirt_track apparel pole land
bannister escalator ottoman bottle buffet poster stage van ship fountain conveyer_belt canopy washer plaything
swimming_pool stool barrel basket waterfall tent bag minibike cradle oven ball food step tank trade_name
microwave pot animal bicycle lake dishwasher screen_projection blanket sculpture hood sconce vase traffic_light
tray ashcan fan pier crt_screen plate monitor bulletin_board shower radiator glass clock flag
""".split())

# fmt: off
ADE20K_PALETTE = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
    (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
    (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4),
    (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
    (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
    (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
    (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
    (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0),
    (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133),
    (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),
    (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153),
    (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
    (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255),
    (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
    (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255),
    (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
    (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0),
    (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
    (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
)
# fmt: on

# Cityscapes train class -> the ADE20K class drawn for it
CITYSCAPES_TO_ADE20K = {
    "road": "road", "sidewalk": "sidewalk", "building": "building", "wall": "wall", "fence": "fence",
    "pole": "pole", "traffic light": "traffic_light", "traffic sign": "signboard", "vegetation": "tree",
    "terrain": "grass", "sky": "sky", "person": "person", "rider": "person", "car": "car", "truck": "truck",
    "bus": "bus", "train": "bus", "motorcycle": "minibike", "bicycle": "bicycle",
}


def ade20k_lut() -> np.ndarray:
    """uint8 [256, 3]: Cityscapes train id -> ADE20K colour; ids outside 0..18 (ignore 255) are black."""
    lut = np.zeros((256, 3), np.uint8)
    for train_id, name in enumerate(CITYSCAPES_CLASSES):
        lut[train_id] = ADE20K_PALETTE[ADE20K_CLASSES.index(CITYSCAPES_TO_ADE20K[name])]
    return lut


def ade20k_image(mask: np.ndarray) -> np.ndarray:
    """uint8 [H,W] Cityscapes train ids -> uint8 [H,W,3] in ADE20K colours (the seg ControlNet's input)."""
    return ade20k_lut()[np.asarray(mask, np.uint8)]
