"""The arithmetic behind the MDSF step-cost estimates (benchmarks/stage_flops.py)."""

import pytest


@pytest.fixture(scope="module")
def flops(load_benchmark):
    return load_benchmark("stage_flops")


def test_predicted_rows_on_a_hand_computed_model(flops):
    frac = {"stem": 0.2, "layer1": 0.3, "layer2": 0.1, "after_body": 0.4, "gflops_per_row": 1.0}
    assert flops.predicted_rows(frac, "naive_synth") == 2.0
    assert flops.predicted_rows(frac, "naive_synth_2twins") == 3.0
    # v2: 3 full rows + p_mix x (rows after layer1: 0.5) + p_mix x (head only: 0.4)
    assert flops.predicted_rows(frac, "v2", p_mix=0.5) == pytest.approx(3.0 + 0.25 + 0.2)
    assert flops.predicted_rows(frac, "v2", p_mix=0.5, fuse_head=False) == pytest.approx(3.25)
    # shallow: the second twin's stem + layer1 (0.5) and the fused row's rest (0.5), for a fused source only
    assert flops.predicted_rows(frac, "shallow", p_mix=0.25, fuse_head=False) == pytest.approx(2.25)
    assert flops.predicted_rows(frac, "shallow", p_mix=0.25, fuse_stage="layer2", fuse_head=False) == pytest.approx(2.25)
    # every source fused: 3 rows, 1.5x naive_synth, wherever the fusion happens
    for stage in ("stem", "layer1", "layer2"):
        assert flops.predicted_rows(frac, "shallow", p_mix=1.0, fuse_stage=stage, fuse_head=False) == pytest.approx(3.0)
    with pytest.raises(ValueError):
        flops.predicted_rows(frac, "something_else")


@pytest.mark.parametrize("task", ["det", "seg"])
def test_stage_fractions_of_the_mini_models_cover_the_whole_forward(flops, task):
    frac = flops.stage_fractions(task)
    shares = {k: v for k, v in frac.items() if k != "gflops_per_row"}
    assert list(shares)[:2] == ["stem", "layer1"] and "after_body" in shares
    assert all(v > 0 for v in shares.values()) and sum(shares.values()) == pytest.approx(1.0)
    assert frac["gflops_per_row"] > 0.1
