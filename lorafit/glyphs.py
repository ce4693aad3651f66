"""Offline synthetic handwritten-ish characters ("glyphs"), MNIST-like 28x28 uint8 images.

The embedded default for smoke runs and tests when no real data is around; not a stand-in for
MNIST/EMNIST results. Each class is rendered with Pillow's built-in font at a few sizes and stroke
widths into a small template bank, then every image gets its own random stroke thickness, affine
warp (rotation, scale, aspect, shear, translation), smooth elastic displacement and pixel noise,
all batched with torch and driven by one seeded torch.Generator, so a seed fully determines the
output.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from lorafit.errors import LorafitError

CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
TASKS = {"digits": CHARS[:10], "chars": CHARS}

# Templates are kept at 2x resolution (slightly blurred as a prefilter) and warped straight to
# 28x28, so the per-image work runs at the output size.
_RES = 56
_BOX = 40  # longest glyph side at 2x = MNIST's 20x20 box at 28x28
_FONT_SIZES = (40, 52, 64)
_STROKES = (0, 1, 2)  # with the glyph scaled to the box, stroke width / font size = pen thickness
_CHUNK = 2048  # images warped per batch: bounds peak memory at a few hundred MB


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # scalable built-in font (Pillow >= 10.1 + FreeType)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()  # bitmap fallback


def _render(ch: str, size: int, stroke: int) -> np.ndarray:
    """One glyph, cropped, scaled to fit the box and placed by centre of mass (as MNIST was)."""
    font = _font(size)
    scalable = isinstance(font, ImageFont.FreeTypeFont)
    width = stroke if scalable else 0
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    x0, y0, x1, y1 = probe.textbbox((0, 0), ch, font=font, stroke_width=width)
    img = Image.new("L", (x1 - x0 + 8, y1 - y0 + 8), 0)
    ImageDraw.Draw(img).text((4 - x0, 4 - y0), ch, fill=255, font=font, stroke_width=width, stroke_fill=255)
    if not scalable and stroke:
        img = img.filter(ImageFilter.MaxFilter(2 * (stroke // 2) + 1))  # emulate the stroke
    img = img.crop(img.getbbox())
    scale = _BOX / max(img.size)
    img = img.resize(
        (max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.LANCZOS
    )
    img = img.filter(ImageFilter.GaussianBlur(0.8))
    glyph = np.asarray(img, dtype=np.float32) / 255.0
    rows, cols = np.indices(glyph.shape)
    mass = glyph.sum()
    cy, cx = (rows * glyph).sum() / mass, (cols * glyph).sum() / mass
    top = int(np.clip(round(_RES / 2 - cy), 0, _RES - glyph.shape[0]))
    left = int(np.clip(round(_RES / 2 - cx), 0, _RES - glyph.shape[1]))
    out = np.zeros((_RES, _RES), dtype=np.float32)
    out[top : top + glyph.shape[0], left : left + glyph.shape[1]] = glyph
    return out


@functools.lru_cache(maxsize=4)
def _templates(chars: str) -> torch.Tensor:
    """[classes, templates, 1, RES, RES] float in [0, 1]; deterministic, so cached per process.

    Each rendered glyph also comes eroded and dilated by half a pixel (at 28x28): drawing a random
    template then gives a random pen thickness without per-image morphology.
    """
    bank = [[_render(ch, s, w) for s in _FONT_SIZES for w in _STROKES] for ch in chars]
    x = torch.from_numpy(np.stack(bank))[:, :, None]
    flat = x.flatten(0, 1)
    thin = -F.max_pool2d(-flat, 3, stride=1, padding=1)
    thick = F.max_pool2d(flat, 3, stride=1, padding=1)
    return torch.cat([v.view_as(x) for v in (thin, flat, thick)], dim=1)


def _uniform(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _distort(src: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Affine + elastic warp, intensity and noise: [n,1,RES,RES] templates -> [n,1,28,28] in [0,1]."""
    n = src.shape[0]
    # Affine: forward map M = rotation @ shear @ anisotropic scale; affine_grid wants the inverse.
    angle = _uniform(g, n, -15.0, 15.0) * (math.pi / 180)
    scale = _uniform(g, n, 0.8, 1.15)
    aspect = torch.exp(_uniform(g, n, -0.12, 0.12))
    shear = _uniform(g, n, -0.3, 0.3)
    shift = torch.stack([_uniform(g, n, -0.08, 0.08), _uniform(g, n, -0.08, 0.08)], dim=1)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    shr = torch.zeros(n, 2, 2)
    shr[:, 0, 0] = shr[:, 1, 1] = 1.0
    shr[:, 0, 1] = shear
    stretch = torch.diag_embed(torch.stack([scale * aspect, scale / aspect], 1))
    inv = torch.linalg.inv(rot @ shr @ stretch)
    theta = torch.cat([inv, -(inv @ shift[:, :, None])], dim=2)
    grid = F.affine_grid(theta, [n, 1, 28, 28], align_corners=False)

    # Elastic: coarse random displacements, upsampled to a smooth field (about 1 px at 28x28).
    alpha = _uniform(g, n, 0.0, 0.09)[:, None, None, None]
    coarse = torch.randn(n, 2, 5, 5, generator=g) * alpha
    field = F.interpolate(coarse, size=(28, 28), mode="bicubic", align_corners=True)
    x = F.grid_sample(
        src, grid + field.permute(0, 2, 3, 1), mode="bilinear", padding_mode="zeros", align_corners=False
    )

    # Intensity: saturate stroke cores like MNIST, then noise on the strokes only (background stays 0).
    peak = x.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    x = (x / peak * _uniform(g, n, 1.0, 1.6)[:, None, None, None]).clamp(0, 1)
    sigma = _uniform(g, n, 0.0, 0.08)[:, None, None, None]
    noise = torch.randn(x.shape, generator=g) * sigma
    return (x + noise * (x > 0.05)).clamp(0, 1)


def generate(task: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """n synthetic glyphs for task "digits" (10 classes) or "chars" (62 classes, 0-9A-Za-z).

    Returns uint8 images [n,1,28,28] (white on black, upright), int64 labels [n] (balanced: class
    counts differ by at most one) and the class names. Same (task, n, seed) -> identical output.
    """
    if task not in TASKS:
        raise LorafitError(f"unknown glyphs task {task!r}; use one of {', '.join(TASKS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise LorafitError(f"glyphs: n must be a positive integer, got {n!r}; pass e.g. n=6000")
    chars = TASKS[task]
    bank = _templates(chars)
    g = torch.Generator().manual_seed(int(seed))
    labels = (torch.arange(n) % len(chars))[torch.randperm(n, generator=g)]
    which = torch.randint(bank.shape[1], (n,), generator=g)
    images = torch.empty(n, 1, 28, 28, dtype=torch.uint8)
    for start in range(0, n, _CHUNK):
        sl = slice(start, start + _CHUNK)
        out = _distort(bank[labels[sl], which[sl]], g)
        images[sl] = (out * 255).round().to(torch.uint8)
    return images, labels.long(), tuple(chars)
