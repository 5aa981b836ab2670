"""Detection metrics on hand-made cases whose answers are worked out in the comments."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from drsf_kit.errors import ConfigError, DataError
from drsf_kit.evaluation.calibration import expected_calibration_error
from drsf_kit.evaluation.detection import detection_ece, evaluate_detections

CLASSES = ["bus", "bike", "car"]
CAR = 3
ALL = ("voc07", "coco", "ece")


def box(i: int, size: float = 10.0) -> list[float]:
    """The i-th of a row of disjoint boxes (none overlaps another)."""
    return [20.0 * i, 0.0, 20.0 * i + size, size]


def far(i: int) -> list[float]:
    """A box that overlaps no ground truth: a false positive wherever it goes."""
    return [500.0 + 20 * i, 500.0, 510.0 + 20 * i, 510.0]


def single_image(gt_boxes, det_boxes, det_scores, difficult=None, det_labels=None):
    targets = {"img": {"boxes": gt_boxes, "labels": [CAR] * len(gt_boxes)}}
    if difficult is not None:
        targets["img"]["difficult"] = difficult
    preds = {"img": {"boxes": det_boxes, "scores": det_scores, "labels": det_labels or [CAR] * len(det_boxes)}}
    return preds, targets


def test_perfect_predictions_score_one_everywhere():
    targets = {
        "a": {"boxes": torch.tensor([box(0), box(1)]), "labels": torch.tensor([1, 3])},
        "b": {"boxes": torch.tensor([box(0), box(2)]), "labels": torch.tensor([2, 3])},
    }
    preds = {k: {"boxes": v["boxes"].clone(), "labels": v["labels"].clone(), "scores": torch.tensor([0.9, 0.8])}
             for k, v in targets.items()}
    r = evaluate_detections(preds, targets, CLASSES, metrics=ALL)
    for key in ("map50_voc07", "ap50_coco", "ap_coco", "ap75_coco"):
        assert r[key] == pytest.approx(1.0), key
    assert all(v == pytest.approx(1.0) for v in r["ap50_voc07"].values())
    assert all(v == pytest.approx(1.0) for v in r["ap50_coco_per_class"].values())
    assert r["num_instances"] == {"bus": 1, "bike": 1, "car": 2}
    assert r["num_images"] == 2 and r["num_detections"] == 4 and r["classes_without_gt"] == []
    json.dumps(r)  # plain Python types only


def test_known_precision_recall_curve():
    # 3 GT cars; detections in score order TP, FP, TP, FP, TP.
    # precision 1, 1/2, 2/3, 2/4, 3/5 at recall 1/3, 1/3, 2/3, 2/3, 1.
    # VOC07: t = 0, .1, .2, .3 -> max precision at recall >= t is 1; t = .4, .5, .6 -> 2/3;
    # t = .7, .8, .9, 1 -> 3/5. AP = (4 * 1 + 3 * 2/3 + 4 * 3/5) / 11 = 8.4 / 11.
    # COCO (101 recall points 0, .01, ..., 1): 34 points <= 1/3 at 1, 33 points up to 2/3 at 2/3,
    # 34 points above at 3/5. AP50 = (34 + 22 + 20.4) / 101 = 76.4 / 101.
    preds, targets = single_image(
        [box(0), box(1), box(2)], [box(0), far(0), box(1), far(1), box(2)], [0.9, 0.8, 0.7, 0.6, 0.5]
    )
    r = evaluate_detections(preds, targets, CLASSES)
    assert r["ap50_voc07"]["car"] == pytest.approx(8.4 / 11)
    assert r["map50_voc07"] == pytest.approx(8.4 / 11)
    assert r["ap50_coco"] == pytest.approx(76.4 / 101)
    # classes without ground truth are NaN and left out of the means
    assert math.isnan(r["ap50_voc07"]["bus"]) and math.isnan(r["ap50_coco_per_class"]["bike"])
    assert r["classes_without_gt"] == ["bus", "bike"]


def test_duplicate_detections_are_false_positives():
    # 2 GT; detections TP, duplicate of the first (FP), TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
    # VOC07: t = 0 .. .5 (6 points) -> 1; t = .6 .. 1 (5 points) -> 2/3. AP = (6 + 10/3) / 11 = 28/33.
    dup = [0.5, 0.0, 10.5, 10.0]  # IoU with box(0) = 95 / 105 > 0.5
    preds, targets = single_image([box(0), box(1)], [box(0), dup, box(1)], [0.9, 0.8, 0.7])
    r = evaluate_detections(preds, targets, CLASSES, metrics=("voc07",))
    assert r["ap50_voc07"]["car"] == pytest.approx(28 / 33)
    clean, _ = single_image([box(0), box(1)], [box(0), box(1)], [0.9, 0.7])
    assert evaluate_detections(clean, targets, CLASSES, metrics=("voc07",))["map50_voc07"] == pytest.approx(1.0)


@pytest.mark.parametrize("detected", [True, False])
def test_difficult_boxes_neither_help_nor_hurt(detected):
    base_preds, base_targets = single_image(
        [box(0), box(1), box(2)], [box(0), far(0), box(1), far(1), box(2)], [0.9, 0.8, 0.7, 0.6, 0.5]
    )
    base = evaluate_detections(base_preds, base_targets, CLASSES, metrics=ALL)
    # one more GT box, difficult, plus (or not) a high-scoring detection right on it
    det_boxes = base_preds["img"]["boxes"] + ([box(5)] if detected else [])
    det_scores = base_preds["img"]["scores"] + ([0.95] if detected else [])
    preds, targets = single_image(
        [box(0), box(1), box(2), box(5)], det_boxes, det_scores, difficult=[False, False, False, True]
    )
    r = evaluate_detections(preds, targets, CLASSES, metrics=ALL)
    for key in ("map50_voc07", "ap50_coco", "ap_coco", "ap75_coco", "ece"):
        assert r[key] == pytest.approx(base[key]), key
    assert r["num_instances"]["car"] == 3 and r["num_difficult"] == 1
    # control: the same box counted as a normal GT would change the AP
    plain = evaluate_detections(preds, {"img": {**targets["img"], "difficult": [False] * 4}}, CLASSES)
    assert plain["map50_voc07"] != pytest.approx(base["map50_voc07"])


def test_images_without_predictions_count_as_misses():
    # image a: its car found (score .9); image b: no prediction at all. One TP at recall 1/2, precision 1:
    # VOC07 t = 0 .. .5 -> 1 (6 of 11 points), the rest 0 -> 6/11.
    targets = {"a": {"boxes": [box(0)], "labels": [CAR]}, "b": {"boxes": [box(0)], "labels": [CAR]}}
    preds = {"a": {"boxes": [box(0)], "scores": [0.9], "labels": [CAR]}}
    r = evaluate_detections(preds, targets, CLASSES)
    assert r["map50_voc07"] == pytest.approx(6 / 11)
    assert r["ap50_coco"] == pytest.approx(51 / 101)  # recall points 0 .. .5 are 51 of 101
    assert r["num_images"] == 2


def test_no_detections_at_all_gives_zero():
    targets = {"a": {"boxes": [box(0)], "labels": [CAR]}}
    r = evaluate_detections({}, targets, CLASSES, metrics=ALL)
    assert r["map50_voc07"] == 0.0 and r["ap50_coco"] == 0.0 and math.isnan(r["ece"])


def test_iou_uses_continuous_coordinates():
    # GT 10x10, detection 10x21 on it: IoU = 100 / 210 < 0.5 (a VOC "+1" rule would give 121/242 = 0.5)
    preds, targets = single_image([[0, 0, 10, 10]], [[0, 0, 10, 21]], [0.9])
    r = evaluate_detections(preds, targets, CLASSES)
    assert r["map50_voc07"] == 0.0 and r["ap50_coco"] == 0.0
    # a detection at exactly IoU 0.5 (100 / 200) is a match
    preds, targets = single_image([[0, 0, 10, 10]], [[0, 0, 10, 20]], [0.9])
    assert evaluate_detections(preds, targets, CLASSES, metrics=("voc07",))["map50_voc07"] == pytest.approx(1.0)


def test_input_forms_agree():
    gt = [box(0), box(1), box(2)]
    dets, scores = [box(0), far(0), box(1)], [0.9, 0.8, 0.7]
    as_lists = evaluate_detections(*single_image(gt, dets, scores), CLASSES)
    seq_preds = [{"image_id": "img", "boxes": np.array(dets), "scores": np.array(scores), "labels": np.array([3] * 3)}]
    seq_targets = [{"image_id": "img", "boxes": torch.tensor(gt), "labels": torch.tensor([3, 3, 3])}]
    as_seq = evaluate_detections(seq_preds, seq_targets, CLASSES)
    assert as_seq["map50_voc07"] == pytest.approx(as_lists["map50_voc07"])
    assert as_seq["ap50_coco"] == pytest.approx(as_lists["ap50_coco"])


def test_wrong_class_is_a_false_positive():
    preds, targets = single_image([box(0)], [box(0)], [0.9], det_labels=[1])
    r = evaluate_detections(preds, targets, CLASSES)
    assert r["ap50_voc07"]["car"] == 0.0 and math.isnan(r["ap50_voc07"]["bus"])


def test_ece_hand_computed():
    # scores .9 .8 .7 .6 .5 land in bins 9..5, one detection each, correct T F T F T:
    # |1-.9| + |0-.8| + |1-.7| + |0-.6| + |1-.5| = 2.3, over 5 detections = 0.46.
    preds, targets = single_image(
        [box(0), box(1), box(2)], [box(0), far(0), box(1), far(1), box(2)], [0.9, 0.8, 0.7, 0.6, 0.5]
    )
    assert detection_ece(preds, targets) == pytest.approx(0.46)
    assert evaluate_detections(preds, targets, CLASSES, metrics=("ece",))["ece"] == pytest.approx(0.46)
    assert expected_calibration_error([1.0, 1.0, 0.0], [1, 1, 0]) == pytest.approx(0.0)


def test_ece_needs_probabilities():
    preds, targets = single_image([box(0)], [box(0)], [1.7])
    assert evaluate_detections(preds, targets, CLASSES)["map50_voc07"] == 1.0  # AP only ranks scores
    with pytest.raises(DataError, match="image img.*outside \\[0, 1\\]"):
        evaluate_detections(preds, targets, CLASSES, metrics=("ece",))
    with pytest.raises(DataError, match="image img"):
        detection_ece(preds, targets)


def test_unknown_metric_is_a_config_error():
    with pytest.raises(ConfigError, match="voc07"):
        evaluate_detections({}, {"a": {"boxes": [], "labels": []}}, CLASSES, metrics=("voc12",))


GOOD_T = {"boxes": [box(0)], "labels": [CAR]}
GOOD_P = {"boxes": [box(0)], "scores": [0.9], "labels": [CAR]}


@pytest.mark.parametrize(
    "pred, target, message",
    [
        ({**GOOD_P, "image_id": "ghost"}, None, "no ground truth"),
        ({**GOOD_P, "labels": [4]}, None, "outside 1..3"),
        ({**GOOD_P, "labels": [0]}, None, "outside 1..3"),
        (None, {**GOOD_T, "labels": [7]}, "outside 1..3"),
        ({**GOOD_P, "boxes": [[10, 0, 5, 10]]}, None, "x2 < x1"),
        (None, {**GOOD_T, "boxes": [[0, 10, 10, 5]]}, "y2 < y1"),
        ({**GOOD_P, "scores": [float("nan")]}, None, "NaN or inf"),
        ({**GOOD_P, "boxes": [[0, 0, float("inf"), 10]]}, None, "NaN or inf"),
        ({**GOOD_P, "scores": [0.9, 0.8]}, None, "1 boxes but 2 scores"),
        ({**GOOD_P, "labels": [CAR, CAR]}, None, "but 2 labels"),
        (None, {**GOOD_T, "difficult": [True, False]}, "difficult flags"),
        ({**GOOD_P, "boxes": [[0, 0, 10]]}, None, "expected [N, 4]"),
    ],
)
def test_bad_input_names_the_image(pred, target, message):
    pred = dict(pred or GOOD_P)
    image_id = pred.pop("image_id", "frame_0042")
    with pytest.raises(DataError) as info:
        evaluate_detections({image_id: pred}, {"frame_0042": target or GOOD_T}, CLASSES)
    assert image_id in str(info.value) and message in str(info.value)


def test_duplicate_image_id_in_sequence_is_an_error():
    seq = [{"image_id": "x", **GOOD_T}, {"image_id": "x", **GOOD_T}]
    with pytest.raises(DataError, match="x.*more than once"):
        evaluate_detections([], seq, CLASSES)


def test_torchvision_style_lists_are_matched_by_position():
    """Model outputs carry no image_id (torchvision's engine zips them with the targets): position decides."""
    targets = [{"image_id": torch.tensor(7), "boxes": torch.tensor([box(0)]), "labels": torch.tensor([CAR])},
               {"image_id": torch.tensor(9), "boxes": torch.tensor([box(1)]), "labels": torch.tensor([CAR])}]
    outputs = [{"boxes": torch.tensor([box(0)]), "scores": torch.tensor([0.9]), "labels": torch.tensor([CAR])},
               {"boxes": torch.tensor([box(1)]), "scores": torch.tensor([0.8]), "labels": torch.tensor([CAR])}]
    right = evaluate_detections(outputs, targets, CLASSES, metrics=("voc07", "coco"))
    assert right["map50_voc07"] == pytest.approx(1.0) and right["ap50_coco"] == pytest.approx(1.0)
    # the same boxes in the other order land on the other image: both miss (IoU 0), AP 0
    swapped = evaluate_detections(outputs[::-1], targets, CLASSES, metrics=("voc07",))
    assert swapped["map50_voc07"] == pytest.approx(0.0)
    # targets without image_id are numbered by position as well
    bare = [{k: v for k, v in t.items() if k != "image_id"} for t in targets]
    assert evaluate_detections(outputs, bare, CLASSES, metrics=("voc07",))["map50_voc07"] == pytest.approx(1.0)
    assert detection_ece(outputs, bare) == pytest.approx(detection_ece(outputs, targets))
    with pytest.raises(DataError, match="1 entries without 'image_id' for 2 ground-truth images"):
        evaluate_detections(outputs[:1], targets, CLASSES)
    with pytest.raises(DataError, match=r"targets\[1\].*give all or none"):
        evaluate_detections(outputs, [targets[0], bare[1]], CLASSES)
