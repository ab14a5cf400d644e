# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""On/off bundle options given on the command line (`--resume false`) arrive as strings: "false" must mean off."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from monai.bundle import ConfigParser
from monai.networks.schedulers import DDIMScheduler

from monai_diffseg.data.skip_failed_loader import SkipFailedDataLoader
from monai_diffseg.inferers import DiffusionSegmentationInferer, DiffusionSliceInferer, RegionOfInterestInferer

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"


def _disabled_entries(node: object, path: str = "") -> list[tuple[str, str]]:
    """(config id, expression) of every ``_disabled_`` expression built on a bundle option."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_disabled_" and isinstance(value, str) and "as_flag(@" in value:
                found.append((path, value))
            else:
                found += _disabled_entries(value, f"{path}#{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _disabled_entries(value, f"{path}#{i}")
    return found


@pytest.mark.parametrize(
    "config", sorted(BUNDLES.glob("*/configs/*.json")), ids=lambda p: f"{p.parent.parent.name}-{p.name}"
)
def test_disabled_switches_read_command_line_words(config: Path) -> None:
    content = json.loads(config.read_text())
    for _, expression in _disabled_entries(content):
        option = expression.split("as_flag(@", 1)[1].split(",", 1)[0]
        for word, disabled in (("false", True), ("true", False), (False, True), (True, False)):
            parser = ConfigParser({"imports": ["$import monai_diffseg"], option: word, "probe": expression})
            assert parser.get_parsed_content("probe") is disabled, (config, option, word)
    # a `$not @option` left in a config would read the command line's "false" as on
    assert '"$not @' not in config.read_text(), config


def test_components_read_command_line_words() -> None:
    scheduler = DDIMScheduler(1000)
    inferer = DiffusionSegmentationInferer(scheduler, progress="false", channels_last="False", compile="0")
    assert (inferer.progress, inferer.channels_last, inferer.compile) == (False, False, False)
    assert DiffusionSliceInferer(scheduler, skip_background="false").skip_background is False
    assert RegionOfInterestInferer(inferer, image_size=32, roi="false").roi is False
    assert SkipFailedDataLoader([{"x": 1}], skip_failed="false").skip_failed is False
    with pytest.raises(ValueError, match="progress must be true or false, got 'nope'"):
        DiffusionSegmentationInferer(scheduler, progress="nope")
