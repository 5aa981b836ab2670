"""The paired-t interval on a case worked by hand."""

import math

import pytest

from drsf_kit.errors import ConfigError
from drsf_kit.evaluation.paired import paired_difference


def test_hand_computed_interval():
    # differences 1, 2, 3 (seed 9 has no partner and is ignored): mean 2, sd 1, se 1/sqrt(3);
    # t_{0.975, 2} = 4.302653 (tables), half width 4.302653 / sqrt(3) = 2.484138
    a = {0: 11.0, 1: 22.0, 2: 33.0, 9: 100.0}
    b = {0: 10.0, 1: 20.0, 2: 30.0}
    d = paired_difference(a, b)
    assert d.n == 3 and d.seeds == (0, 1, 2)
    assert d.mean == pytest.approx(2.0)
    assert d.sd == pytest.approx(1.0)
    assert d.low == pytest.approx(2.0 - 2.484138, abs=1e-5)
    assert d.high == pytest.approx(2.0 + 2.484138, abs=1e-5)


def test_single_pair_has_no_interval_and_disjoint_arms_fail():
    d = paired_difference({0: 3.0}, {0: 1.0})
    assert d.mean == 2.0 and math.isnan(d.low) and math.isnan(d.high)
    with pytest.raises(ConfigError):
        paired_difference({0: 1.0}, {1: 1.0})
