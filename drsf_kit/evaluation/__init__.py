"""Evaluation: VOC2007 11-point and COCO-style detection AP, calibration, mIoU, tidy rows and tables.

Every number carries its metric's name (``map50_voc07`` is never ``ap50_coco``) and every table
caption names the metric and the protocol; see ``docs/evaluation.md``.
"""

from drsf_kit.evaluation.calibration import expected_calibration_error, reliability_bins
from drsf_kit.evaluation.detection import detection_ece, evaluate_detections
from drsf_kit.evaluation.results import PROTOCOL_LABELS, detection_rows, load_results, segmentation_rows
from drsf_kit.evaluation.segmentation import SegmentationMeter, evaluate_segmentation
from drsf_kit.evaluation.tables import METRIC_LABELS, domain_table, per_class_table, write_tables

__all__ = [
    "evaluate_detections", "detection_ece", "expected_calibration_error", "reliability_bins",
    "SegmentationMeter", "evaluate_segmentation",
    "load_results", "detection_rows", "segmentation_rows", "PROTOCOL_LABELS",
    "domain_table", "per_class_table", "write_tables", "METRIC_LABELS",
]
