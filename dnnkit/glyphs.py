"""Synthetic 32x32x3 glyph images over crops of real photographs: the shared generator of the
suite folders `syndigits` (house-number digits, SVHN's shape) and `signs` (glyphs on sign plates,
GTSRB's class count).

Sources, all inside installed PyPI packages (nothing is downloaded):
  * fonts: matplotlib's bundled TrueType fonts (mpl-data/fonts/ttf): 21 text fonts in 5 families,
    DejaVu Sans / Sans Mono / Serif and STIX General (OFL-style licences, LICENSE_DEJAVU and
    LICENSE_STIX beside them) and the BaKoMa Computer Modern fonts (cmr10 cmb10 cmss10 cmti10 cmtt10);
  * photos: 14 real photographs that scikit-image 0.26.0 ships in skimage/data (public domain or
    CC0 by their docstrings in skimage.data) and matplotlib's sample_data/grace_hopper.jpg
    (US Navy photo, public domain). Grey photos are tinted with a random colour.

Splits are disjoint in fonts AND photos (`FONT_SPLIT`: 14 train / 3 validation / 4 test fonts,
each split mixing the families; `PHOTO_SPLIT`: 9 / 2 / 4 photos). Each sample's group is
font_id * 100 + photo_id (indices into FONTS and PHOTO_NAMES), so a shared group would mean a
shared font.

One image: a random square crop of a photo (colour-jittered) is the 48x48 canvas (1.5x the output);
a "house" style blends a plain plate colour over it and writes the class glyph with a random
neighbour glyph on each side (SVHN-like); a "sign" style draws a circle / triangle / square /
diamond plate with a border and the glyph inside. Plate, border and glyph masks are warped
together (scale, rotation, perspective, shift) and coloured; then occluding bars, Gaussian blur,
a 1.5x down-scale to 32x32, Gaussian pixel noise and JPEG re-encoding, each with the probability
and range of the task's `Style`. Each chunk of CHUNK images draws its randomness from its own
generator seeded by (seed, split, chunk start), so the arrays do not depend on the number of
worker processes.
"""
from __future__ import annotations

import importlib.util
import io
import multiprocessing as mp
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dnnkit import datasets
from weightsep.dnn import Dataset, Split

SIZE = 32  # output side
CANVAS = 48  # working side (1.5x, down-scaled at the end for anti-aliasing)
DIGITS = "0123456789"
SYMBOLS = "!?+&%#="  # present in every font below (checked by tests/test_suite_images.py)
SIGN_GLYPHS = DIGITS + "ABCDEFGHIJKLMNOPQRSTUVWXYZ" + SYMBOLS  # 43 classes, GTSRB's count

# font family -> file names in matplotlib's mpl-data/fonts/ttf (text fonts only: the STIX size
# variants and cmmi/cmsy/cmex are symbol fonts, DejaVu*Display hold a few dozen glyphs)
FONT_FAMILIES = {
    "DejaVu Sans": ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf"),
    "DejaVu Sans Mono": ("DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
                         "DejaVuSansMono-BoldOblique.ttf"),
    "DejaVu Serif": ("DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf"),
    "STIX General": ("STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf"),
    "Computer Modern": ("cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmti10.ttf", "cmtt10.ttf"),
}
FONTS = tuple(f for family in FONT_FAMILIES.values() for f in family)

# photo name -> (package, path inside it); "scikit-image" is skimage/data, "matplotlib" is mpl-data
PHOTOS = {
    "astronaut": ("scikit-image", "astronaut.png"),
    "chelsea": ("scikit-image", "chelsea.png"),
    "coffee": ("scikit-image", "coffee.png"),
    "hubble_deep_field": ("scikit-image", "hubble_deep_field.jpg"),
    "ihc": ("scikit-image", "ihc.png"),
    "retina": ("scikit-image", "retina.jpg"),
    "rocket": ("scikit-image", "rocket.jpg"),
    "brick": ("scikit-image", "brick.png"),
    "camera": ("scikit-image", "camera.png"),
    "cell": ("scikit-image", "cell.png"),
    "clock_motion": ("scikit-image", "clock_motion.png"),
    "coins": ("scikit-image", "coins.png"),
    "grass": ("scikit-image", "grass.png"),
    "gravel": ("scikit-image", "gravel.png"),
    "grace_hopper": ("matplotlib", "sample_data/grace_hopper.jpg"),
}
PHOTO_NAMES = tuple(PHOTOS)

# fonts per split: disjoint, each split mixing the families. Holding out whole families (test =
# Computer Modern, validation = DejaVu Serif) was tried first: syndigits' test accuracy fell to 0.72
# (0.90 with this split and slightly milder noise), far below SVHN's range for a net of this size.
FONT_SPLIT = {
    "train": ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSansMono.ttf",
              "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf", "DejaVuSerif.ttf", "DejaVuSerif-BoldItalic.ttf",
              "STIXGeneral.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf", "cmr10.ttf", "cmti10.ttf", "cmtt10.ttf"),
    "val": ("DejaVuSans-BoldOblique.ttf", "DejaVuSerif-Bold.ttf", "cmb10.ttf"),
    "test": ("DejaVuSansMono-Bold.ttf", "DejaVuSerif-Italic.ttf", "STIXGeneralBol.ttf", "cmss10.ttf"),
}
PHOTO_SPLIT = {
    "train": ("astronaut", "hubble_deep_field", "ihc", "retina", "grace_hopper", "brick", "camera", "cell", "gravel"),
    "val": ("coffee", "coins"),
    "test": ("chelsea", "rocket", "grass", "clock_motion"),
}
SKIMAGE_PIN = "scikit-image==0.26.0"
MATPLOTLIB_PIN = "matplotlib==3.11.2"


@dataclass(frozen=True)
class Style:
    """How one task draws its images; ranges are (low, high) drawn uniformly per image."""

    kind: str  # "house" (plate colour over the photo, glyph with neighbours) or "sign" (shaped plate)
    glyph_height: tuple[float, float]  # class glyph's ink height, as a fraction of the output side
    rotation_deg: float  # std of the rotation (Gaussian, clipped at 2.5 std)
    perspective: float  # max corner displacement, as a fraction of the canvas side
    scale: tuple[float, float] = (0.9, 1.1)  # of the whole plate/glyph layer
    shift: float = 0.06  # max shift of the layer centre, fraction of the canvas side
    contrast: tuple[float, float] = (60.0, 200.0)  # colour distance glyph vs plate, in 0..255 units
    plate_alpha: tuple[float, float] = (0.3, 0.95)  # "house": plate colour over the photo
    bars: float = 0.0  # probability of 1-2 occluding bars
    blur: tuple[float, float] = (0.0, 1.5)  # Gaussian blur radius in canvas pixels (2/3 of that on the output)
    blur_p: float = 0.5
    noise: tuple[float, float] = (0.0, 12.0)  # std of Gaussian pixel noise on the output, 0..255 units
    jpeg_p: float = 0.0  # probability of JPEG re-encoding ...
    jpeg_quality: tuple[int, int] = (20, 60)  # ... at a quality in this range
    dim: tuple[float, float] = (0.5, 1.15)  # overall brightness factor of the finished image
    tie: float = 0.0  # "sign": probability that the plate has its class's shape and fill colour (else random)


@dataclass(frozen=True)
class Recipe:
    """A whole task: glyph classes, style, split sizes, seed, and which fonts / photos each split uses."""

    glyphs: str
    style: Style
    sizes: dict  # split -> number of images
    seed: int
    font_split: dict | None = None  # split -> font file names (default FONT_SPLIT)
    photo_split: dict | None = None  # split -> photo names (default PHOTO_SPLIT)

    def fonts_of(self, split: str) -> list[int]:
        return [FONTS.index(f) for f in (self.font_split or FONT_SPLIT)[split]]

    def photos_of(self, split: str) -> list[int]:
        return [PHOTO_NAMES.index(p) for p in (self.photo_split or PHOTO_SPLIT)[split]]


# ---- sources --------------------------------------------------------------------------------------

def _package_dir(module: str) -> Path:
    """Where an importable package lives, without importing it (site-packages/<module> if absent)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return Path(sysconfig.get_paths()["purelib"]) / module
    return Path(next(iter(spec.submodule_search_locations)))


def font_dir() -> Path:
    return _package_dir("matplotlib") / "mpl-data" / "fonts" / "ttf"


def photo_path(name: str) -> Path:
    package, rel = PHOTOS[name]
    if package == "scikit-image":
        return _package_dir("skimage") / "data" / rel
    return _package_dir("matplotlib") / "mpl-data" / rel


def source_paths() -> tuple[list[Path], list[Path]]:
    """Every font and photo file, checked with datasets.require (FileNotFoundError naming the first
    missing one and the pip command that installs it). Call before any work."""
    fonts = [datasets.require(font_dir() / f, f"pip install {MATPLOTLIB_PIN}") for f in FONTS]
    photos = []
    for name in PHOTO_NAMES:
        pin = SKIMAGE_PIN if PHOTOS[name][0] == "scikit-image" else MATPLOTLIB_PIN
        photos.append(datasets.require(photo_path(name), f"pip install {pin}"))
    return fonts, photos


# ---- drawing (runs in worker processes; caches are per process) ---------------------------------

_FONT_PATHS: list[str] = []
_PHOTO_PATHS: list[str] = []
_FONT_CACHE: dict = {}
_PHOTO_CACHE: dict = {}
_METRIC_CACHE: dict = {}


def _init(font_paths: Sequence[str], photo_paths: Sequence[str]) -> None:
    global _FONT_PATHS, _PHOTO_PATHS
    _FONT_PATHS, _PHOTO_PATHS = list(font_paths), list(photo_paths)
    _FONT_CACHE.clear()
    _METRIC_CACHE.clear()
    _PHOTO_CACHE.clear()


def _font(font_id: int, size: int):
    from PIL import ImageFont

    key = (font_id, size)
    if key not in _FONT_CACHE:
        _FONT_CACHE[key] = ImageFont.truetype(_FONT_PATHS[font_id], size)
    return _FONT_CACHE[key]


def _photo(photo_id: int):
    """The photo at half size (crops then need less resampling) and whether it is grey."""
    from PIL import Image

    if photo_id not in _PHOTO_CACHE:
        with Image.open(_PHOTO_PATHS[photo_id]) as im:
            grey = im.mode in ("L", "LA", "I", "I;16")
            _PHOTO_CACHE[photo_id] = (im.convert("RGB").reduce(2), grey)
    return _PHOTO_CACHE[photo_id]


def _tinted(im, gains):
    return im.convert("RGB", (float(gains[0]), 0, 0, 0, 0, float(gains[1]), 0, 0, 0, 0, float(gains[2]), 0))


def _background(rng: np.random.Generator, photo_id: int):
    """A random square crop of the photo, resized to the canvas, colour-jittered (an RGB image)."""
    from PIL import Image

    photo, grey = _photo(photo_id)
    w, h = photo.size
    side = int(rng.integers(CANVAS // 2, min(w, h) // 2 + 1))
    x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    im = photo.resize((CANVAS, CANVAS), Image.BILINEAR, box=(x0, y0, x0 + side, y0 + side))
    if rng.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    return _tinted(im, rng.uniform(0.35, 1.0, 3) if grey else rng.uniform(0.7, 1.0, 3))  # grey photos get a colour


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3)


def _contrasting(rng: np.random.Generator, base: np.ndarray, contrast: tuple[float, float]) -> np.ndarray:
    """A colour at a random distance in `contrast` from `base`, towards light or dark."""
    lum = float(base.mean())
    sign = 1.0 if lum < 96 else -1.0 if lum > 160 else float(rng.choice([-1.0, 1.0]))
    direction = rng.uniform(0.4, 1.6, 3)  # mean 1 per channel: mostly grey-ish shifts, some hue
    return np.clip(base + sign * rng.uniform(*contrast) * direction, 0, 255)


def _perspective_coeffs(dst: np.ndarray, src: np.ndarray) -> np.ndarray:
    """PIL's 8 PERSPECTIVE coefficients mapping output points `dst` to input points `src` ([4, 2] each)."""
    a = np.zeros((8, 8))
    for k, ((x, y), (u, v)) in enumerate(zip(dst, src)):
        a[2 * k] = [x, y, 1, 0, 0, 0, -u * x, -u * y]
        a[2 * k + 1] = [0, 0, 0, x, y, 1, -v * x, -v * y]
    return np.linalg.solve(a, src.reshape(8))


def _warp(rng: np.random.Generator, masks, style: Style):
    """Scale, rotate, perspective-distort and shift the mask image about the canvas centre."""
    from PIL import Image

    c = CANVAS / 2
    src = np.array([[0, 0], [CANVAS, 0], [CANVAS, CANVAS], [0, CANVAS]], dtype=np.float64)
    angle = np.deg2rad(np.clip(rng.normal(0, 1), -2.5, 2.5) * style.rotation_deg)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = (src - c) @ rot.T * rng.uniform(*style.scale) + c
    dst += rng.uniform(-style.perspective, style.perspective, (4, 2)) * CANVAS
    dst += rng.uniform(-style.shift, style.shift, 2) * CANVAS
    coeffs = _perspective_coeffs(dst, src)
    return masks.transform((CANVAS, CANVAS), Image.PERSPECTIVE, tuple(coeffs), Image.BILINEAR)


def _metrics(font_id: int, size: int, ch: str) -> tuple[tuple[int, int, int, int], float]:
    """Ink box and advance width of one glyph (cached: FreeType look-ups are slow, docs/results.md#code-notes)."""
    key = (font_id, size, ch)
    if key not in _METRIC_CACHE:
        font = _font(font_id, size)
        _METRIC_CACHE[key] = (font.getbbox(ch), font.getlength(ch))
    return _METRIC_CACHE[key]


def _glyph_mask(draw, font_id: int, text: str, centre: int, height: float, spacing: float = 0.0) -> None:
    """Draw `text` so that the ink of its glyph number `centre` has about `height` pixels and is centred."""
    _, t, _, b = _metrics(font_id, 100, text[centre])[0]
    size = max(6, int(round(100 * height / max(b - t, 1))))
    font = _font(font_id, size)
    (left, t, right, b), advance = _metrics(font_id, size, text[centre])
    x = CANVAS / 2 - (left + right) / 2
    y = CANVAS / 2 - (t + b) / 2
    draw.text((x, y), text[centre], font=font, fill=255)
    # neighbours: placed by advance width (plus a random gap), partly outside the canvas
    gap = spacing * size
    right_x = x + advance + gap
    for ch in text[centre + 1:]:
        draw.text((right_x, y), ch, font=font, fill=255)
        right_x += _metrics(font_id, size, ch)[1] + gap
    left_x = x
    for ch in reversed(text[:centre]):
        left_x -= _metrics(font_id, size, ch)[1] + gap
        draw.text((left_x, y), ch, font=font, fill=255)


def _plate(draw, shape: str, box: tuple[float, float, float, float], fill: int) -> None:
    x0, y0, x1, y1 = box
    mx, my = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "diamond":
        draw.polygon([(mx, y0), (x1, my), (mx, y1), (x0, my)], fill=fill)
    elif shape == "triangle":
        draw.polygon([(mx, y0), (x1, y1), (x0, y1)], fill=fill)
    else:
        raise ValueError(f"unknown plate shape {shape!r}")


SHAPES = ("circle", "triangle", "square", "diamond")
# sign plate palettes (fill, border): white/red, blue/white, yellow/black, white/black, red/white, ...
SIGN_COLOURS = np.array([[235, 235, 230], [200, 30, 35], [30, 70, 170], [240, 200, 30], [25, 25, 25],
                         [30, 130, 60], [240, 130, 30]], dtype=np.float64)


def _fill(colour: np.ndarray):
    from PIL import Image

    return Image.new("RGB", (CANVAS, CANVAS), tuple(int(round(v)) for v in colour))


def render(rng: np.random.Generator, glyphs: str, label: int, font_id: int, photo_id: int, style: Style) -> np.ndarray:
    """One image of class `label` (the glyph glyphs[label]): uint8 [32, 32, 3]."""
    from PIL import Image, ImageDraw, ImageFilter

    out = _background(rng, photo_id)
    plate_m, border_m, glyph_m = (Image.new("L", (CANVAS, CANVAS)) for _ in range(3))
    height = rng.uniform(*style.glyph_height) * CANVAS
    if style.kind == "house":
        plate_col = _colour(rng)
        out = Image.blend(out, _fill(plate_col), float(rng.uniform(*style.plate_alpha)))
        glyph_col = _contrasting(rng, plate_col, style.contrast)
        text = glyphs[int(rng.integers(len(glyphs)))] + glyphs[label] + glyphs[int(rng.integers(len(glyphs)))]
        _glyph_mask(ImageDraw.Draw(glyph_m), font_id, text, 1, height, spacing=rng.uniform(-0.02, 0.15))
        layers = [(glyph_m, glyph_col)]
    elif style.kind == "sign":
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        fill_i, border_i = rng.choice(len(SIGN_COLOURS), 2, replace=False)
        if rng.random() < style.tie:  # the class's own plate: shape label % 4, fill colour label // 4 % 7
            shape, fill_i = SHAPES[label % len(SHAPES)], label // len(SHAPES) % len(SIGN_COLOURS)
            border_i = (fill_i + 1 + rng.integers(len(SIGN_COLOURS) - 1)) % len(SIGN_COLOURS)
        plate_col = np.clip(SIGN_COLOURS[fill_i] + rng.normal(0, 15, 3), 0, 255)
        border_col = np.clip(SIGN_COLOURS[border_i] + rng.normal(0, 15, 3), 0, 255)
        glyph_col = _contrasting(rng, plate_col, style.contrast)
        half = CANVAS * rng.uniform(0.40, 0.48)
        c = CANVAS / 2
        outer = (c - half, c - half, c + half, c + half)
        ring = half * rng.uniform(0.10, 0.18) * (1.6 if shape == "triangle" else 1.0)
        inner = (c - half + ring, c - half + ring * (1.0 if shape != "triangle" else 1.4), c + half - ring, c + half - ring)
        _plate(ImageDraw.Draw(border_m), shape, outer, 255)
        _plate(ImageDraw.Draw(border_m), shape, inner, 0)
        _plate(ImageDraw.Draw(plate_m), shape, inner, 255)
        if shape == "triangle":  # the glyph sits in the wide lower part, a little smaller
            height *= 0.8
        _glyph_mask(ImageDraw.Draw(glyph_m), font_id, glyphs[label], 0, height)
        if shape == "triangle":
            glyph_m = glyph_m.transform((CANVAS, CANVAS), Image.AFFINE, (1, 0, 0, 0, 1, -CANVAS * 0.1), Image.BILINEAR)
        layers = [(plate_m, plate_col), (border_m, border_col), (glyph_m, glyph_col)]
    else:
        raise ValueError(f"unknown style kind {style.kind!r}")
    # warp all masks with one transform (up to 3 masks as the bands of one RGB image)
    bands = [m for m, _ in layers] + [Image.new("L", (CANVAS, CANVAS))] * (3 - len(layers))
    warped = _warp(rng, Image.merge("RGB", bands), style).split()
    for k, (_, col) in enumerate(layers):
        out = Image.composite(_fill(col), out, warped[k])
    if rng.random() < style.bars:  # occluding bars (wires, branches, shadows)
        draw = ImageDraw.Draw(out)
        for _ in range(int(rng.integers(1, 3))):
            p = rng.uniform(0, CANVAS, 4)
            draw.line([(p[0], 0), (p[1], CANVAS)] if rng.random() < 0.5 else [(0, p[2]), (CANVAS, p[3])],
                      fill=tuple(int(v) for v in _colour(rng)), width=int(rng.integers(2, 5)))
    out = _tinted(out, np.full(3, rng.uniform(*style.dim)))
    if rng.random() < style.blur_p:
        out = out.filter(ImageFilter.GaussianBlur(rng.uniform(*style.blur)))
    out = out.resize((SIZE, SIZE), Image.BILINEAR)
    a = np.asarray(out, dtype=np.float32) + rng.normal(0, rng.uniform(*style.noise), (SIZE, SIZE, 3))
    a = a.clip(0, 255).round().astype(np.uint8)
    if rng.random() < style.jpeg_p:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=int(rng.integers(*style.jpeg_quality)))
        buf.seek(0)
        with Image.open(buf) as j:
            a = np.asarray(j.convert("RGB"), dtype=np.uint8)
    return a


SPLIT_IDS = {split: i for i, split in enumerate(datasets.SPLITS)}


def plan(recipe: Recipe, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels (balanced, shuffled), font ids and photo ids of every image of a split."""
    n = recipe.sizes[split]
    rng = np.random.default_rng([recipe.seed, SPLIT_IDS[split], 0])
    labels = rng.permutation(np.arange(n) % len(recipe.glyphs))
    fonts = np.asarray(recipe.fonts_of(split))[rng.integers(0, len(recipe.fonts_of(split)), n)]
    photos = np.asarray(recipe.photos_of(split))[rng.integers(0, len(recipe.photos_of(split)), n)]
    return labels.astype(np.int64), fonts.astype(np.int64), photos.astype(np.int64)


CHUNK = 100  # images per random generator and per job; part of the recipe (changing it changes the data)


def _chunk(args) -> np.ndarray:
    recipe, split, start, labels, fonts, photos = args
    rng = np.random.default_rng([recipe.seed, SPLIT_IDS[split], 1, start])  # seeded by chunk index, not by worker
    out = np.empty((len(labels), SIZE, SIZE, 3), np.uint8)
    for k, (y, f, p) in enumerate(zip(labels, fonts, photos)):
        out[k] = render(rng, recipe.glyphs, int(y), int(f), int(p), recipe.style)
    return out


def generate(recipe: Recipe, workers: int = 2) -> tuple[dict, dict, dict]:
    """uint8 images [N, 32, 32, 3], labels and groups (font_id * 100 + photo_id) of every split.

    The same for any `workers`: each chunk of CHUNK images has its own seed; workers > 1 forks a pool."""
    fonts, photos = source_paths()  # FileNotFoundError before any work
    font_paths, photo_paths = [str(p) for p in fonts], [str(p) for p in photos]
    jobs, labels, groups = [], {}, {}
    for split in datasets.SPLITS:
        y, f, p = plan(recipe, split)
        labels[split], groups[split] = y, f * 100 + p
        jobs += [(recipe, split, s, y[s : s + CHUNK], f[s : s + CHUNK], p[s : s + CHUNK]) for s in range(0, len(y), CHUNK)]
    if workers > 1:
        # fork: the workers need no re-import of the caller's __main__ (weightsep's has no guard)
        with mp.get_context("fork").Pool(workers, _init, (font_paths, photo_paths)) as pool:
            parts = pool.map(_chunk, jobs, chunksize=1)
    else:
        _init(font_paths, photo_paths)
        parts = [_chunk(job) for job in jobs]
    images = {}
    for split in datasets.SPLITS:
        mine = [part for job, part in zip(jobs, parts) if job[1] == split]
        images[split] = np.concatenate(mine) if mine else np.empty((0, SIZE, SIZE, 3), np.uint8)
    return images, labels, groups


def build(recipe: Recipe, workers: int = 2) -> tuple[Dataset, dict[str, np.ndarray]]:
    """The Dataset (x float32 NCHW in [0, 1] = pixel / 255, y int64) and groups, for prepare_npz."""
    images, labels, groups = generate(recipe, workers)
    data = Dataset(*(Split(np.ascontiguousarray(images[s].transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255),
                           labels[s]) for s in datasets.SPLITS))
    return data, groups


def grid(images: np.ndarray, cols: int = 16, zoom: int = 4):
    """A PIL image of uint8 [N, 32, 32, 3] images in rows of `cols`, enlarged `zoom` times (previews)."""
    from PIL import Image

    rows = -(-len(images) // cols)
    pad = np.zeros((rows * cols, *images.shape[1:]), np.uint8)
    pad[: len(images)] = images
    sheet = pad.reshape(rows, cols, SIZE, SIZE, 3).transpose(0, 2, 1, 3, 4).reshape(rows * SIZE, cols * SIZE, 3)
    return Image.fromarray(sheet).resize((cols * SIZE * zoom, rows * SIZE * zoom), Image.NEAREST)
