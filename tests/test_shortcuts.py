"""What-if evidence for every kind of shortcut: model B learned a compact mark, a coloured
frame around the image, a background colour or a fine texture (model A the stripes,
:func:`tests.helpers.write_kind_set`); removing that content wherever it is in the image
must flip B far more often than random regions of the same area do, and far more often
than it flips A."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


def _shortcut_concept(run, present: dict) -> pd.Series:
    """The concept B relies on most, checked to be the shortcut: its images carry it."""
    top = run.concepts.sort_values("diff", ascending=False).iloc[0]
    images = run.patches.loc[run.patches["concept"] == top["concept"], "image_id"].unique()
    paths = run.images.set_index("image_id").loc[images, "image"]
    carry = np.mean([present[p] for p in paths])
    assert carry >= 0.9, f"concept {top['concept']}: only {carry:.0%} of its images carry it"
    return top


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mark", "frame", "background"])
def test_sho001_removing_the_shortcut_flips_its_model_only(kind, kind_set, kind_run) -> None:
    run = kind_run(kind)
    top = _shortcut_concept(run, kind_set(kind)["present"])
    print(kind, top["whatif_verdict"], f"area {top['whatif_area']:.0%}")
    flip_b, flip_a = top["whatif_flip_b"], top["whatif_flip_a"]
    assert top["whatif_n_images"] >= 30
    assert flip_b >= 0.5, top["whatif_verdict"]
    # random regions of the same area: a frame's or a background's regions cover most of
    # the image (77 % for the frame), so random ones of that area overlap it and flip B
    # too (24 % on one CI machine against 62 %); the verdict's own rule still holds below
    ratio = 5 if kind == "mark" else 2
    assert flip_b >= ratio * top["whatif_control_flip_b"], top["whatif_verdict"]
    assert flip_b >= 5 * flip_a, top["whatif_verdict"]  # the other model
    assert top["whatif_effect"] == "B depends" and not top["whatif_inconclusive_b"]
    # the regions removed go beyond the salient patches: the whole frame, the background
    boxes = run.concept_whatif_boxes
    mine = boxes[(boxes["concept"] == top["concept"]) & ~boxes["control"]]
    per_image = mine.groupby("image_id").size()
    patches = run.patches[run.patches["concept"] == top["concept"]].groupby("image_id").size()
    if kind != "mark":
        assert (per_image.reindex(patches.index) > patches).mean() >= 0.9


@pytest.mark.slow
def test_sho002_identical_models_stay_neither(kind_run) -> None:
    run = kind_run("mark", identical=True)
    w = run.concept_whatif
    assert len(w) >= 1
    # the same model twice: the same flips, and no claim that either one needs anything
    assert (w["whatif_flip_a"] == w["whatif_flip_b"]).all()
    assert set(w["whatif_effect"]) <= {"neither", "inconclusive"}, w["whatif_verdict"].tolist()
    assert not run.concepts["significant"].any()


def test_sho003_the_demo_logo_flips_b_and_random_regions_leave_a_alone(demo) -> None:
    """The issue's numbers on the demo: with black boxes, random regions flipped A on 72 %
    of the logo concept's images; with the default fill they must flip A on < 20 % while
    removing the logo still flips B on >= 90 %."""
    top = demo.concepts.iloc[0]  # the logo (test_demo009)
    assert demo.manifest["whatif"]["removal"] == "road"
    assert top["whatif_control_flip_a"] < 0.2, top["whatif_verdict"]
    assert top["whatif_flip_b"] >= 0.9, top["whatif_verdict"]
    assert top["whatif_effect"] == "B depends" and not top["whatif_inconclusive_a"]
    # the page greys out no model here, and the trust lines say no "no better than random"
    # that the fill alone would cause
    assert not any("no better than a random" in w for w in demo.warnings), demo.warnings


def test_sho004_the_readme_quotes_what_the_page_says(demo) -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    top = demo.concepts.iloc[0]
    assert f"what-if: {top['whatif_effect']} — {top['whatif_verdict']}" in " ".join(
        readme.split()
    ), top["whatif_verdict"]
