"""sklesion's metadata vector from a record's age, sex and body site
(dermserve/trainer/two_origin_network.py): the neutral vector for no context, sklesion's own
one-hot groups for the sites HAM10000 and ISIC 2019 record, and "unknown" for what spans groups."""

from __future__ import annotations

import numpy as np
import pytest

from dermserve.trainer.two_origin_network import (
    NEUTRAL_CONTEXT,
    SKLESION_SEXES,
    SKLESION_SITES,
    site_group,
    sklesion_context,
)


def test_no_context_is_the_neutral_vector() -> None:
    np.testing.assert_array_equal(sklesion_context(None, "unknown", "unknown"), NEUTRAL_CONTEXT)
    np.testing.assert_array_equal(sklesion_context(None, "", "palms/soles"), NEUTRAL_CONTEXT)


def test_a_known_context_is_one_hot_with_age_over_90() -> None:
    vector = sklesion_context(45.0, "Female", "anterior torso")
    sexes, sites = vector[:3], vector[3:8]
    assert SKLESION_SEXES[int(sexes.argmax())] == "female" and sexes.sum() == 1
    assert SKLESION_SITES[int(sites.argmax())] == "trunk" and sites.sum() == 1
    assert vector[8] == pytest.approx(0.5) and vector[9] == 0.0


@pytest.mark.parametrize("site, group", [
    ("back", "trunk"), ("upper extremity", "arm"), ("hand", "arm"), ("scalp", "head-or-neck"),
    ("head/neck", "head-or-neck"), ("foot", "leg-or-genital"), ("genital", "leg-or-genital"),
    ("acral", "unknown"), ("oral/genital", "unknown"), ("palms/soles", "unknown"), ("", "unknown"),
])
def test_sites_fall_in_sklesion_groups(site: str, group: str) -> None:
    assert site_group(site) == group
