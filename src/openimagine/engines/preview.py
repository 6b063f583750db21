"""The built-in ``preview`` engine: no model, CPU only, fast.

It lets a fresh install answer every request end to end (and tests run in
seconds) while producing clips that visibly follow the request:

* text only: a procedural animation whose palette, shapes and motion come from
  a stable hash of the prompt and the variation index, with the mode setting
  the temperament (``normal`` calm, ``fun`` bouncy, ``spicy`` fast and harsh);
* with images: a slow camera move (zoom and pan) over each image, cover-cropped
  to the requested ratio, crossfading from one image to the next.

Frames are produced lazily, one at a time, so a long clip never sits in memory.
"""

from __future__ import annotations

import colorsys
import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from openimagine.engines.base import Cancelled, Clip, EngineInfo, Job, frame_size
from openimagine.inputs.images import upright_rgb
from openimagine.settings import Settings

INFO = EngineInfo(
    name="preview",
    description="Built-in procedural animation, or camera moves over the input images; "
    "no model, CPU only, a few seconds per task.",
    image_input=True,
)

# Check for cancellation this often (frames); a frame takes a few milliseconds.
CANCEL_CHECK_EVERY = 4
# OpenBLAS runs a matrix product on one thread when m*n*k is at most 4 * 65536.
# Frames are multiplied in row bands under that size: threaded products this small
# gain nothing, and under load (the encoder's threads compete for the same cores)
# they were measured ten times slower than single-threaded ones.
SINGLE_THREAD_GEMM = 4 * 65536


def variation_seed(prompt: str, index: int) -> int:
    """A seed stable across processes and Python versions (unlike ``hash()``)."""
    digest = hashlib.sha256(f"{prompt}\x00{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


class _Progress:
    """Reports the share of all frames of all variations produced so far.

    Keeps a high-water mark per clip so that iterating a clip twice does not
    count twice.
    """

    def __init__(self, report: Callable[[float], None], clips: int, frames: int) -> None:
        self._report = report
        self._done = [0] * clips
        self._total = clips * frames

    def advance(self, clip: int, frames_done: int) -> None:
        if frames_done > self._done[clip]:
            self._done[clip] = frames_done
            self._report(min(1.0, sum(self._done) / self._total))


class _LazyFrames:
    """Re-iterable frames of one clip: each iteration renders them afresh."""

    def __init__(
        self,
        make_renderer: Callable[[], Callable[[int], np.ndarray]],
        count: int,
        clip: int,
        job: Job,
        progress: _Progress,
    ) -> None:
        self._make_renderer = make_renderer
        self._count = count
        self._clip = clip
        self._job = job
        self._progress = progress

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[np.ndarray]:
        # Per-clip set-up (palette, grids, buffers) happens on first use, not in generate().
        render = self._make_renderer()
        for index in range(self._count):
            if index % CANCEL_CHECK_EVERY == 0 and self._job.is_cancelled():
                raise Cancelled(self._job.task_id)
            frame = render(index)
            self._progress.advance(self._clip, index + 1)
            yield frame


# ---------------------------------------------------------------- text scenes


@dataclass(frozen=True)
class _Style:
    blobs: int
    speed: tuple[float, float]  # blob motion frequency range, Hz
    size: tuple[float, float]  # blob radius range, in half short sides
    saturation: float
    background: tuple[float, float]  # value (HSV) of the two gradient ends
    glow: float  # blob brightness, 0..255
    wave: float  # wave amplitude, 0..255
    wave_speed: float  # rad/s
    drift: float  # background rotation, rad/s
    bounce: bool = False
    pulse: float = 0.0  # blob brightness flicker depth


STYLES = {
    "normal": _Style(
        blobs=4,
        speed=(0.04, 0.10),
        size=(0.45, 0.8),
        saturation=0.55,
        background=(0.22, 0.5),
        glow=95,
        wave=14,
        wave_speed=0.6,
        drift=0.08,
    ),
    "fun": _Style(
        blobs=8,
        speed=(0.5, 0.9),
        size=(0.16, 0.3),
        saturation=0.9,
        background=(0.45, 0.8),
        glow=150,
        wave=22,
        wave_speed=2.0,
        drift=0.3,
        bounce=True,
    ),
    "spicy": _Style(
        blobs=6,
        speed=(0.5, 1.3),
        size=(0.2, 0.45),
        saturation=1.0,
        # High contrast comes from a near-black ground under blobs bright enough to
        # clip to white at their cores; no per-pixel tone curve needed.
        background=(0.03, 0.22),
        glow=250,
        wave=45,
        wave_speed=7.0,
        drift=1.2,
        pulse=0.35,
    ),
}

# A few words nudge the palette so that "ocean" looks blue and "fire" warm.
HUE_HINTS = {
    "fire": 0.03,
    "flame": 0.03,
    "sunset": 0.06,
    "desert": 0.09,
    "gold": 0.12,
    "sun": 0.13,
    "forest": 0.33,
    "grass": 0.3,
    "jungle": 0.36,
    "ocean": 0.56,
    "sea": 0.55,
    "water": 0.55,
    "sky": 0.58,
    "ice": 0.52,
    "night": 0.66,
    "space": 0.7,
    "galaxy": 0.75,
    "neon": 0.83,
    "rose": 0.95,
    "love": 0.97,
}


def _rgb(hue: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, saturation, value), dtype=np.float32)


def _base_hue(prompt: str, rng: np.random.Generator) -> float:
    words = "".join(c if c.isalnum() else " " for c in prompt.lower()).split()
    for word in words:
        if word in HUE_HINTS:
            return HUE_HINTS[word] + rng.uniform(-0.04, 0.04)
    return float(rng.random())


def text_renderer(
    prompt: str, mode: str, seed: int, width: int, height: int, fps: int
) -> Callable[[int], np.ndarray]:
    """Frame ``i`` -> RGB uint8 (height, width, 3) for a text-only request.

    Every layer is separable in x and y (a linear gradient, a plane wave as
    sin(a+b) = sin a cos b + cos a sin b, Gaussian blobs as products of 1-D
    Gaussians), so a whole frame is one small matrix product ``L @ R`` with all
    transcendental functions evaluated on 1-D vectors only. That is cheaper than
    rendering small and upscaling: per pixel it costs a rank-(4 + blobs) dot
    product, a clip and a conversion to uint8.
    """
    style = STYLES.get(mode, STYLES["normal"])
    rng = np.random.default_rng(seed)
    w, h = width, height
    half_short = min(w, h) / 2.0
    # Coordinates in units of half the short side, origin at the center.
    xs = ((np.arange(w) + 0.5 - w / 2.0) / half_short).astype(np.float32)
    ys = ((np.arange(h) + 0.5 - h / 2.0) / half_short).astype(np.float32)
    x_extent, y_extent = w / 2.0 / half_short, h / 2.0 / half_short

    hue = _base_hue(prompt, rng)
    sat = style.saturation
    # Background gradient: ``mid + half * g`` with g the rotating coordinate.
    end_a = _rgb(hue, sat * 0.8, style.background[0]) * 255.0
    end_b = (
        _rgb(
            hue + rng.choice([-1.0, 1.0]) * rng.uniform(0.04, 0.12), sat * 0.8, style.background[1]
        )
        * 255.0
    )
    mid, half = (end_a + end_b) / 2.0, (end_b - end_a) / 2.0
    angle0 = rng.uniform(0, 2 * math.pi)
    drift = style.drift * rng.choice([-1.0, 1.0])
    extent = math.hypot(x_extent, y_extent)

    wave_color = _rgb(hue + 0.5, sat, 1.0) * style.wave
    wave_k = rng.uniform(2.5, 5.0)
    wave_angle = rng.uniform(0, 2 * math.pi)
    wave_phase = rng.uniform(0, 2 * math.pi)

    n = style.blobs
    # Blob hues cluster around an analogous or complementary scheme.
    offsets = rng.choice([0.0, 0.08, -0.08, 0.5, 0.42], size=n) + rng.normal(0, 0.03, size=n)
    colors = np.stack([_rgb(hue + o, sat, 1.0) for o in offsets]) * style.glow
    lo, hi = style.speed
    freq_x, freq_y = rng.uniform(lo, hi, size=n), rng.uniform(lo, hi, size=n)
    phase_x, phase_y = rng.uniform(0, 2 * math.pi, size=(2, n))
    reach_x, reach_y = rng.uniform(0.35, 0.85, size=(2, n))
    radius = rng.uniform(*style.size, size=n)
    breathe = rng.uniform(0.1, 0.3, size=n)
    pulse_phase = rng.uniform(0, 2 * math.pi, size=n)

    two_pi = 2 * math.pi
    rank = 4 + n
    left = np.empty((h, rank), dtype=np.float32)  # factors that vary along y
    right = np.empty((rank, w, 3), dtype=np.float32)  # factors that vary along x
    left[:, 0] = 1.0
    flat_right = right.reshape(rank, w * 3)
    frame = np.empty((h, w * 3), dtype=np.float32)
    band = max(1, SINGLE_THREAD_GEMM // (w * 3 * rank))

    def render(index: int) -> np.ndarray:
        t = index / fps
        # Gradient g = (x cos a + y sin a) / extent, split into an x and a y term.
        angle = angle0 + drift * t
        gx = xs * (math.cos(angle) / extent)
        right[0] = mid + gx[:, None] * half
        left[:, 1] = ys * (math.sin(angle) / extent)
        right[1] = half
        # Travelling plane wave.
        kx = xs * (wave_k * math.cos(wave_angle))
        ky = ys * (wave_k * math.sin(wave_angle)) - style.wave_speed * t + wave_phase
        left[:, 2], left[:, 3] = np.cos(ky), np.sin(ky)
        right[2] = np.sin(kx)[:, None] * wave_color
        right[3] = np.cos(kx)[:, None] * wave_color
        # Blobs.
        if style.bounce:
            # Balls bouncing off the bottom edge while crossing back and forth.
            travel = (freq_x * t * 0.5 + phase_x / two_pi) % 1.0
            cx = (np.abs(travel * 2.0 - 1.0) * 2.0 - 1.0) * x_extent * 0.85
            hop = np.abs(np.sin(math.pi * freq_y * t + phase_y))
            cy = y_extent * 0.85 - hop * y_extent * (0.9 + reach_y)
            # Squash a little near the floor.
            ry = radius * (0.75 + 0.25 * hop)
            rx = radius * (1.15 - 0.15 * hop)
        else:
            cx = reach_x * x_extent * np.sin(two_pi * freq_x * t + phase_x)
            cy = reach_y * y_extent * np.sin(two_pi * freq_y * t + phase_y)
            size = radius * (1.0 + breathe * np.sin(two_pi * freq_y * 0.7 * t + phase_x))
            rx = ry = size
        gain = 1.0 - style.pulse * (0.5 + 0.5 * np.sin(two_pi * 2.0 * t + pulse_phase))
        left[:, 4:] = np.exp(-(((ys[:, None] - cy) / ry) ** 2))
        across = np.exp(-(((xs[:, None] - cx) / rx) ** 2)) * gain  # (w, n)
        right[4:] = across.T[:, :, None] * colors[:, None, :]

        for top in range(0, h, band):
            np.matmul(left[top : top + band], flat_right, out=frame[top : top + band])
        np.clip(frame, 0.0, 255.0, out=frame)
        return frame.astype(np.uint8).reshape(h, w, 3)

    return render


# ---------------------------------------------------------------- image scenes

# Largest zoom at the end of each image's time on screen, per mode; each
# variation draws its own amount up to this, and its own pan direction.
ZOOM = {"normal": 1.1, "fun": 1.15, "spicy": 1.22}


def cover_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale ``image`` to cover width x height, then crop the center."""
    image = upright_rgb(image)
    src_w, src_h = image.size
    # Keep the limiting side exact so float error never puts the box outside the image.
    if src_w * height >= src_h * width:  # source is wider: crop the sides
        crop_w, crop_h = src_h * width / height, float(src_h)
    else:  # source is taller: crop top and bottom
        crop_w, crop_h = float(src_w), src_w * height / width
    left, top = (src_w - crop_w) / 2.0, (src_h - crop_h) / 2.0
    return image.resize(
        (width, height),
        Image.Resampling.BICUBIC,
        box=(left, top, left + crop_w, top + crop_h),
        reducing_gap=3.0,  # large photos shrink by fast integer steps first
    )


def _ease(u: float, mode: str) -> float:
    """Camera progress 0..1 for time 0..1; never flat, so every frame moves."""
    if mode == "spicy":
        return 0.3 * u + 0.7 * u * u  # accelerating push-in
    return 0.5 * u + 0.5 * u * u * (3.0 - 2.0 * u)  # gentle start and stop


def image_renderer(
    sources: Sequence[Image.Image],
    mode: str,
    seed: int,
    width: int,
    height: int,
    frames: int,
    fps: int,
) -> Callable[[int], np.ndarray]:
    """Frame ``i`` -> RGB uint8: each source under a zoom and pan, crossfading in order.

    ``sources`` are already cover-cropped to ``width * max zoom`` so zooming in
    never magnifies pixels. Each image's move starts at the full view, so the
    clip opens on exactly the (cover-cropped) first image.
    """
    rng = np.random.default_rng(seed)
    count = len(sources)
    # Each image gets its own pan direction and zoom; variations differ through the seed.
    angles = rng.uniform(0, 2 * math.pi, size=count)
    zoom_ends = 1.0 + (ZOOM.get(mode, ZOOM["normal"]) - 1.0) * rng.uniform(0.6, 1.0, size=count)
    shake_phase = rng.uniform(0, 2 * math.pi, size=2)
    segment = frames / count
    fade = min(segment * 0.5, frames * 0.15)

    def view(which: int, u: float, index: int) -> Image.Image:
        source = sources[which]
        src_w, src_h = source.size
        zoom = 1.0 + (zoom_ends[which] - 1.0) * _ease(u, mode)
        win_w, win_h = src_w / zoom, src_h / zoom
        slack_x, slack_y = (src_w - win_w) / 2.0, (src_h - win_h) / 2.0
        dx, dy = math.cos(angles[which]), math.sin(angles[which])
        if mode == "fun":
            # A playful sway across the pan direction.
            sway = math.sin(u * 2.0 * math.pi) * 0.6
            dx, dy = dx - dy * sway, dy + dx * sway
        cx = src_w / 2.0 + max(-1.0, min(1.0, dx)) * slack_x
        cy = src_h / 2.0 + max(-1.0, min(1.0, dy)) * slack_y
        if mode == "spicy":
            # Handheld shake (about 6 Hz whatever the fps), kept inside the image.
            t = index / fps
            cx += math.sin(t * 41.0 + shake_phase[0]) * slack_x * 0.15
            cy += math.sin(t * 55.0 + shake_phase[1]) * slack_y * 0.15
        cx = min(max(cx, win_w / 2.0), src_w - win_w / 2.0)
        cy = min(max(cy, win_h / 2.0), src_h - win_h / 2.0)
        box = (cx - win_w / 2.0, cy - win_h / 2.0, cx + win_w / 2.0, cy + win_h / 2.0)
        return source.resize((width, height), Image.Resampling.BILINEAR, box=box)

    def span(which: int) -> tuple[float, float]:
        """Frames during which image ``which`` is on screen (fades included)."""
        start = 0.0 if which == 0 else which * segment - fade / 2.0
        end = float(frames - 1) if which == count - 1 else (which + 1) * segment + fade / 2.0
        return start, max(end, start + 1e-6)

    spans = [span(which) for which in range(count)]

    def local(which: int, index: int) -> float:
        start, end = spans[which]
        return min(1.0, max(0.0, (index - start) / (end - start)))

    def render(index: int) -> np.ndarray:
        visible = [k for k, (start, end) in enumerate(spans) if start <= index <= end]
        current = visible[0] if visible else min(count - 1, int(index / segment))
        image = view(current, local(current, index), index)
        if len(visible) > 1:
            following = visible[1]
            start = spans[following][0]
            alpha = min(1.0, max(0.0, (index - start) / fade)) if fade > 0 else 1.0
            image = Image.blend(image, view(following, local(following, index), index), alpha)
        return np.asarray(image)

    return render


# ---------------------------------------------------------------- the engine


class PreviewEngine:
    info = INFO

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def generate(self, job: Job) -> list[Clip]:
        """One lazy clip per variation; rendering happens as the frames are iterated."""
        if job.is_cancelled():
            raise Cancelled(job.task_id)
        width, height = frame_size(job.ratio, job.resolution)
        frames = max(1, round(job.duration * job.fps))
        progress = _Progress(job.on_progress, job.variations, frames)
        sources: list[Image.Image] = []
        if job.images:
            zoom = ZOOM.get(job.mode, ZOOM["normal"])
            big = (round(width * zoom), round(height * zoom))
            # Cropped once and shared by all variations; only the camera differs.
            sources = [cover_crop(image, *big) for image in job.images]

        clips = []
        for index in range(job.variations):
            seed = variation_seed(job.prompt, index)

            def make_renderer(seed: int = seed) -> Callable[[int], np.ndarray]:
                if sources:
                    return image_renderer(sources, job.mode, seed, width, height, frames, job.fps)
                return text_renderer(job.prompt, job.mode, seed, width, height, job.fps)

            lazy = _LazyFrames(make_renderer, frames, index, job, progress)
            clips.append(Clip(frames=lazy, fps=job.fps, width=width, height=height, seed=seed))
        return clips
