# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Every bundle under bundles/ has the MONAI bundle layout and metadata that verifies against the schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT.parent / "shared" / "schemas" / "meta_schema_20240725.json"
BUNDLES = sorted(p for p in (ROOT / "bundles").iterdir() if (p / "configs").is_dir())
REQUIRED = ("metadata.json", "train.json", "inference.json", "evaluate.json")


def test_bundles_found() -> None:
    assert {b.name for b in BUNDLES} >= {
        "medsegdiff_isic2018",
        "diffseg_isic2018",
        "medsegdiff_fundus_disc_cup",
        "medsegdiff_thyroid_ddti",
        "medsegdiff_polyp",
        "medsegdiff_multirater",
    }


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda b: b.name)
def test_bundle_files(bundle: Path) -> None:
    configs = bundle / "configs"
    for name in REQUIRED:
        json.loads((configs / name).read_text())  # present and valid JSON
    for extra in configs.glob("*.json"):
        json.loads(extra.read_text())
    assert (configs / "logging.conf").is_file()
    assert (bundle / "LICENSE").is_file() and (bundle / "docs" / "README.md").is_file()
    meta = json.loads((configs / "metadata.json").read_text())
    assert meta["version"] and meta["changelog"][meta["version"]]


@pytest.mark.skipif(not SCHEMA.is_file(), reason="../shared/schemas not available")
@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda b: b.name)
def test_metadata_verifies_against_schema(bundle: Path) -> None:
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(SCHEMA))
