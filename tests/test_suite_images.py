"""dnnkit.glyphs: the synthetic glyph-over-photo generator of suite/syndigits and suite/signs.

Tiny builds only (tens of images), so this runs in seconds; the folders' full builds are checked by
tests/test_suite.py once prepared.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import ImageFont

from dnnkit import datasets, glyphs
from weightsep import dnn

if not glyphs.photo_path("astronaut").is_file():
    pytest.skip("scikit-image's bundled photos are not installed (pip install scikit-image==0.26.0)", allow_module_level=True)

TINY = {"train": 12, "val": 4, "test": 6}


def tiny(kind: str, glyph_set: str, seed: int = 0) -> glyphs.Recipe:
    style = dnn.load_folder(dnn.SUITE_DIR / ("syndigits" if kind == "house" else "signs")).module.STYLE
    return glyphs.Recipe(glyph_set, style, TINY, seed=seed)


@pytest.mark.parametrize("kind,glyph_set", [("house", glyphs.DIGITS), ("sign", glyphs.SIGN_GLYPHS)])
def test_tiny_build_is_deterministic_and_well_formed(kind, glyph_set):
    recipe = tiny(kind, glyph_set)
    data, groups = glyphs.build(recipe, workers=1)
    again, groups_again = glyphs.build(recipe, workers=1)
    for split in datasets.SPLITS:
        s, t = getattr(data, split), getattr(again, split)
        assert s.x.shape == (TINY[split], 3, glyphs.SIZE, glyphs.SIZE) and s.x.dtype == np.float32
        assert s.y.shape == (TINY[split],) and s.y.dtype == np.int64
        assert 0.0 <= s.x.min() and s.x.max() <= 1.0 and s.x.std() > 0.02
        assert 0 <= s.y.min() and s.y.max() < len(glyph_set)
        assert np.array_equal(s.x, t.x) and np.array_equal(s.y, t.y), f"{split} differs between two builds"
        assert np.array_equal(groups[split], groups_again[split])
        np.testing.assert_array_equal(s.x * 255, np.round(s.x * 255))  # x = uint8 pixel / 255 exactly
    other, _ = glyphs.build(tiny(kind, glyph_set, seed=1), workers=1)
    assert not np.array_equal(data.train.x, other.train.x), "the seed must change the images"


def test_worker_count_does_not_change_the_images():
    recipe = glyphs.Recipe(glyphs.DIGITS, tiny("house", glyphs.DIGITS).style,
                           {"train": glyphs.CHUNK + 5, "val": 3, "test": 3}, seed=0)
    one, _ = glyphs.build(recipe, workers=1)
    two, _ = glyphs.build(recipe, workers=2)
    for split in datasets.SPLITS:
        assert np.array_equal(getattr(one, split).x, getattr(two, split).x), split


def test_labels_are_balanced():
    labels, _, _ = glyphs.plan(glyphs.Recipe(glyphs.SIGN_GLYPHS, tiny("sign", glyphs.SIGN_GLYPHS).style,
                                             {"train": 86, "val": 43, "test": 43}, seed=0), "train")
    assert np.bincount(labels, minlength=43).tolist() == [2] * 43


def test_splits_are_font_and_photo_disjoint():
    recipe = tiny("house", glyphs.DIGITS)
    fonts = {s: set(recipe.fonts_of(s)) for s in datasets.SPLITS}
    photos = {s: set(recipe.photos_of(s)) for s in datasets.SPLITS}
    for a, b in [("train", "val"), ("train", "test"), ("val", "test")]:
        assert not fonts[a] & fonts[b], (a, b)
        assert not photos[a] & photos[b], (a, b)
    assert set().union(*fonts.values()) == set(range(len(glyphs.FONTS)))
    assert set().union(*photos.values()) == set(range(len(glyphs.PHOTOS)))
    _, groups = glyphs.build(recipe, workers=1)  # groups = font * 100 + photo
    for split in datasets.SPLITS:
        assert set((groups[split] // 100).tolist()) <= fonts[split]
        assert set((groups[split] % 100).tolist()) <= photos[split]


def test_every_font_has_every_glyph():
    fonts, _ = glyphs.source_paths()
    for path in fonts:
        font = ImageFont.truetype(str(path), 40)
        inks = []
        for ch in glyphs.SIGN_GLYPHS:
            mask = np.asarray(font.getmask(ch), dtype=np.uint8)
            assert mask.size and mask.max() > 128, f"{path.name} draws nothing for {ch!r}"
            inks.append(mask.tobytes())
        assert len(set(inks)) == len(inks), f"{path.name} draws two glyphs the same (a missing-glyph box?)"


def test_missing_source_is_named_before_any_work(monkeypatch):
    def missing(path, install):
        raise FileNotFoundError(2, f"data source missing; install it with {install}", str(path))

    monkeypatch.setattr(datasets, "require", missing)
    with pytest.raises(FileNotFoundError) as e:
        glyphs.build(tiny("house", glyphs.DIGITS), workers=1)
    assert e.value.filename and "pip install" in str(e.value)
