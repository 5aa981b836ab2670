"""Segmentation meter on hand-made label maps with known confusion matrices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drsf_kit.errors import DataError
from drsf_kit.evaluation.results import segmentation_rows
from drsf_kit.evaluation.segmentation import SegmentationMeter, evaluate_segmentation

NAMES = ["road", "car", "sky"]
# target / prediction over 8 pixels, 255 = ignore:
TARGET = torch.tensor([[0, 0, 0, 1], [1, 2, 2, 255]])
PRED = torch.tensor([[0, 0, 1, 1], [2, 2, 2, 0]])
# counted pixels (rows = GT, cols = prediction):
#   GT 0 -> pred 0, 0, 1       GT 1 -> pred 1, 2       GT 2 -> pred 2, 2     (the ignored pixel is skipped)
CONFUSION = [[2, 1, 0], [0, 1, 1], [0, 0, 2]]
# IoU = TP / (row sum + column sum - TP): road 2/(3+2-2) = 2/3, car 1/(2+2-1) = 1/3, sky 2/(2+3-2) = 2/3
IOU = {"road": 2 / 3, "car": 1 / 3, "sky": 2 / 3}


def meter(num_classes=3, names=NAMES):
    return SegmentationMeter(num_classes=num_classes, class_names=names)


def test_known_confusion_matrix_gives_known_ious():
    m = meter()
    m.update(PRED, TARGET)
    r = m.compute()
    assert r["confusion"] == CONFUSION
    assert r["iou"] == pytest.approx(IOU)
    assert r["miou"] == pytest.approx((2 / 3 + 1 / 3 + 2 / 3) / 3)
    assert r["pixel_acc"] == pytest.approx(5 / 7)
    assert r["absent_classes"] == [] and r["num_pixels"] == 7


def test_absent_class_is_excluded_from_the_mean():
    m = meter(num_classes=4, names=NAMES + ["train"])
    m.update(PRED, TARGET)
    r = m.compute()
    assert r["iou"]["train"] is None and r["absent_classes"] == ["train"]
    assert r["miou"] == pytest.approx((2 / 3 + 1 / 3 + 2 / 3) / 3)
    # a class only predicted (never in GT) is present: IoU 0 and it counts in the mean
    m.update(torch.full((1, 2, 2), 3), torch.zeros(1, 2, 2, dtype=torch.long))
    r = m.compute()
    assert r["iou"]["train"] == 0.0 and r["absent_classes"] == []


def test_logits_batches_and_numpy_agree_with_labels():
    logits = torch.nn.functional.one_hot(PRED, 3).permute(2, 0, 1).float().unsqueeze(0) * 5.0
    from_logits, from_numpy, batched = meter(), meter(), meter()
    from_logits.update(logits, TARGET.unsqueeze(0))
    from_numpy.update(PRED.numpy(), TARGET.numpy())
    batched.update(torch.stack([PRED, PRED]), torch.stack([TARGET, TARGET]))
    assert from_logits.compute()["confusion"] == CONFUSION
    assert from_numpy.compute()["confusion"] == CONFUSION
    assert batched.compute()["confusion"] == (2 * np.array(CONFUSION)).tolist()
    assert batched.compute()["miou"] == pytest.approx(from_logits.compute()["miou"])


def test_evaluate_segmentation_and_rows():
    r = evaluate_segmentation([(PRED, TARGET, "img_a"), (PRED, TARGET)], num_classes=3, class_names=NAMES,
                              progress=False)
    assert r["num_images"] == 2 and r["iou"] == pytest.approx(IOU)
    rows = segmentation_rows(r, variant="drsf", seed=1, domain="cityscapes", split="val", protocol="val",
                             step=100, run="r1")
    summary = {row["metric"]: row["value"] for row in rows if row["class"] is None}
    assert summary == pytest.approx({"miou": r["miou"], "pixel_acc": r["pixel_acc"]})
    assert {row["class"] for row in rows if row["metric"] == "iou"} == set(NAMES)
    assert all(row["task"] == "seg" for row in rows)


def test_default_is_cityscapes_19():
    m = SegmentationMeter()
    m.update(torch.zeros(4, 4, dtype=torch.long), torch.zeros(4, 4, dtype=torch.long))
    r = m.compute()
    assert r["miou"] == 1.0 and len(r["absent_classes"]) == 18 and r["iou"]["road"] == 1.0


@pytest.mark.parametrize(
    "pred, target, message, where",
    [
        (torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, 4, 5, dtype=torch.long), "does not match", "aachen_1"),
        (torch.zeros(2, 4, 4, dtype=torch.long), torch.tensor([[[0] * 4] * 4, [[0, 0, 0, 7]] * 4]), "outside 0..2",
         "bremen_2"),
        (torch.tensor([[[0] * 4] * 4, [[0, 0, 9, 0]] * 4]), torch.zeros(2, 4, 4, dtype=torch.long), "outside 0..2",
         "bremen_2"),
        # whole-batch problems name the batch
        (torch.zeros(2, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long), "floating point", "batch"),
        (torch.zeros(2, 5, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long), "5 channels", "batch"),
    ],
)
def test_bad_input_names_the_image(pred, target, message, where):
    with pytest.raises(DataError) as info:
        meter().update(pred, target, image_ids=["aachen_1", "bremen_2"])
    assert message in str(info.value) and where in str(info.value)


def test_shape_mismatch_of_single_image_names_it():
    with pytest.raises(DataError, match="munich_7"):
        meter().update(torch.zeros(1, 3, 3, dtype=torch.long), torch.zeros(1, 4, 4, dtype=torch.long),
                       image_ids=["munich_7"])
