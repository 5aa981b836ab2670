"""The ablation variants: the rows of every results table, as one plain name -> spec dict."""

from __future__ import annotations

from dataclasses import dataclass

from drsf_kit.errors import ConfigError


@dataclass(frozen=True)
class VariantSpec:
    """What a variant trains on and which DRSF blocks its model contains."""

    # Train on the pseudo-target twins (with the source's labels) as well as on the source.
    use_synth: bool
    # Insert DFDR (channel decoupling + reassembly) in the backbone.
    use_dfdr: bool
    # Apply MDSF (soft fusion + adversarial discriminator) on the features the head reads.
    use_mdsf: bool
    # One line for tables and help texts.
    description: str
    # Add a paired twin-consistency loss on the head's maps (stop-gradient on the source).
    use_consistency: bool = False


VARIANTS: dict[str, VariantSpec] = {
    "source_only": VariantSpec(False, False, False, "source domain only, no synthetic data, no DRSF blocks"),
    "naive_synth": VariantSpec(True, False, False, "source + pseudo-target twins with reused labels, no DRSF blocks"),
    "dfdr": VariantSpec(True, True, False, "source + twins with DFDR (entropy-guided decoupling and reassembly)"),
    "mdsf": VariantSpec(True, False, True, "source + twins with MDSF (soft fusion + adversarial discriminator)"),
    "drsf": VariantSpec(True, True, True, "source + twins with both DFDR and MDSF (full DRSF)"),
    # Control for DRSF: any paired loss on twins, without decoupling or fusion.
    "naive_consistency": VariantSpec(True, False, False, "source + twins with a paired twin-consistency loss "
                                     "(twin maps pulled to the source's), no DRSF blocks", use_consistency=True),
}


def get_variant(name: str) -> VariantSpec:
    """The spec of variant ``name``; an unknown name raises ConfigError listing the valid ones."""
    try:
        return VARIANTS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown variant {name!r}; valid variants: {', '.join(VARIANTS)}") from None
