"""Distribution-gap analysis: how far is synthetic data from real targets, and what does the network see?

- ``features``: stage features of any model (forward hooks), cached on disk; image collection
- ``gap``: MMD, Frechet distance, domain-classifier accuracy, ``gap_table``, ``compare_gap_tables``
- ``embedding``: PCA / t-SNE coordinates
- ``entropy``: DFDR channel entropy and gates per domain, prediction-entropy maps
- ``attribution``: GradCAM and integrated gradients for segmentation classes and detection boxes
- ``cli``: ``drsf gap`` (an entry point: it draws through ``drsf_kit.viz``)

Everything here returns arrays and frames; ``drsf_kit.viz.plots`` draws them (``plot_embedding``,
``gate_histograms``, ``attribution_grid``, ``plot_overlay``).

Names are imported on first use, so ``drsf --help`` does not pay for torch, pandas and scikit-learn.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "features": ("Features", "DomainImage", "available_stages", "collect_domain_images", "default_backbone",
                 "default_stage", "extract_features", "features_by_group", "model_fingerprint"),
    "gap": ("mmd", "frechet_distance", "domain_classifier_accuracy", "gap_table", "gap_matrix",
            "closest_pseudo_domains", "compare_gap_tables"),
    "embedding": ("pca_embed", "tsne_embed"),
    "entropy": ("channel_entropy", "channel_stats_by_domain", "suppressed_channels",
                "prediction_entropy_map", "detection_entropy_map"),
    "attribution": ("gradcam", "integrated_gradients", "attribution_maps",
                    "SegmentationClassScore", "DetectionBoxScore", "DetectionRoIScore", "StageActivationScore"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'drsf_kit.analysis' has no attribute {name!r}")
    module = importlib.import_module(f"drsf_kit.analysis.{_WHERE[name]}")
    return getattr(module, name)
