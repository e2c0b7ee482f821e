"""View options: resolved values, round trips, and errors that name the option."""

import pytest

from labelfree.views import ViewAugmentation, build_views, lightly_view_transform


def test_config_round_trip(imagenet):
    aug = ViewAugmentation(
        input_size=16, sigmas=[0.2, 1.0], rr_degrees=[-10, 10], normalize=imagenet
    )
    again = ViewAugmentation(**aug.config)
    assert again.config == aug.config
    assert aug.config["sigmas"] == (0.2, 1.0)
    assert aug.config["rr_degrees"] == (-10.0, 10.0)
    assert "cj_strength=1.0" in repr(aug)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"input_size": 0}, "input_size=0"),
        ({"input_size": 8, "hf_prob": 1.5}, "hf_prob=1.5"),
        ({"input_size": 8, "min_scale": 0.0}, "min_scale=0.0"),
        ({"input_size": 8, "min_scale": 0.9, "max_scale": 0.5}, "max_scale=0.5"),
        ({"input_size": 8, "sigmas": (2.0, 1.0)}, "sigmas="),
        ({"input_size": 8, "cj_hue": 0.6}, "exceeds 0.5"),
        ({"input_size": 8, "cj_bright": -1}, "cj_bright=-1"),
        ({"input_size": 8, "rr_degrees": (10, -10)}, "rr_degrees="),
        ({"input_size": 8, "normalize": {"mean": [0.5]}}, "keys 'mean' and 'std'"),
        ({"input_size": 8, "normalize": {"mean": [0.5], "std": [0.0]}}, "std > 0"),
    ],
)
def test_invalid_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ViewAugmentation(**kwargs)


def test_unknown_option_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown augmentation option\(s\) \['cj_strenght'\]"):
        build_views({"input_size": 8, "cj_strenght": 0.5})
    with pytest.raises(ValueError, match="Choose from: input_size, cj_prob"):
        lightly_view_transform(input_size=8, colour=1)
    with pytest.raises(ValueError, match="per_view is empty"):
        build_views({"input_size": 8}, [])
