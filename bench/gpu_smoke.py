"""Smoke run of a diffusers engine on a real (or tiny) model: one default clip per mode.

Usage:
    python bench/gpu_smoke.py MODEL_DIR [--engine wan|ltx|cogvideox] [--i2v-model DIR]
        [--steps N] [--duration S] [--fps N] [--resolution PX] [--ratio 16:9]
        [--device auto] [--dtype auto] [--offload] [--tiling] [--slicing] [--compile]
        [--out DIR] [--json]

For each mode (fun, normal, spicy) it renders one text-to-video clip (and one
image-to-video clip when an image-to-video model is configured) through the
same engine object the server uses, and prints seconds per clip, output frames
per second (frames rendered / seconds) and peak GPU memory
(``torch.cuda.max_memory_allocated``; peak RSS on a CPU). Clips are also
encoded to MP4 (H.264) with ``--out``.

Without --duration/--fps/--resolution the clip follows the model card (Wan:
81 frames at 480 px; LTX: 121 at 512; CogVideoX: 49 at 480), like the engine
does when OPENIMAGINE_DURATION/FPS/RESOLUTION are unset. --steps overrides the
profile's step count for every mode (handy on a CPU with a tiny model:
``openimagine models make-tiny wan-t2v /tmp/wan && python bench/gpu_smoke.py
/tmp/wan --steps 2 --resolution 64 --duration 1 --fps 8``).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def _test_image(width: int = 832, height: int = 480) -> Image.Image:
    """A gradient with a few shapes: something for image-to-video to hold on to."""
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    rgb = np.stack(
        [
            np.broadcast_to(x, (height, width)),
            np.broadcast_to(y, (height, width)),
            np.broadcast_to(0.5 * (1 - x) * y, (height, width)),
        ],
        -1,
    )
    image = (rgb * 255).astype(np.uint8)
    image[height // 3 : height // 2, width // 3 : width // 2] = (240, 200, 40)
    return Image.fromarray(image)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "model_dir", type=Path, help="text-to-video model folder (diffusers layout)"
    )
    parser.add_argument("--engine", choices=("wan", "ltx", "cogvideox"), default="wan")
    parser.add_argument("--i2v-model", type=Path, default=None, help="image-to-video model folder")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps for every mode")
    parser.add_argument("--duration", type=float, default=None)
    parser.add_argument("--fps", type=int, default=None)
    parser.add_argument("--resolution", type=int, default=None, help="short side in pixels")
    parser.add_argument("--ratio", default="16:9")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--offload", action="store_true", help="enable_model_cpu_offload")
    parser.add_argument("--tiling", action="store_true", help="VAE tiling")
    parser.add_argument("--slicing", action="store_true", help="VAE slicing")
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformer")
    parser.add_argument("--out", type=Path, default=None, help="write the clips as MP4 here")
    parser.add_argument("--json", action="store_true", help="print one JSON summary at the end")
    args = parser.parse_args(argv)

    from openimagine.engines import create_engine
    from openimagine.engines.base import MODES, Job
    from openimagine.settings import Settings

    workdir = Path(tempfile.mkdtemp(prefix="gpu-smoke-"))
    values: dict[str, Any] = {
        "data_dir": workdir,
        "engine": args.engine,
        "model_path": args.model_dir,
        "i2v_model_path": args.i2v_model,
        "device": args.device,
        "dtype": args.dtype,
        "cpu_offload": args.offload,
        "vae_tiling": args.tiling,
        "vae_slicing": args.slicing,
        "compile": args.compile,
    }
    # Only what was asked for is "explicitly set"; the rest follows the model card.
    for knob in ("duration", "fps", "resolution"):
        if getattr(args, knob) is not None:
            values[knob] = getattr(args, knob)
    if args.steps is not None:
        profiles = workdir / "profiles.toml"
        profiles.write_text(f"[{args.engine}]\nsteps = {args.steps}\n")
        values["profiles"] = profiles
    settings = Settings(**values)

    import torch

    from openimagine.engines.diffusers.engine import DiffusersEngine

    cuda = torch.cuda.is_available() and args.device != "cpu"
    started = time.perf_counter()
    engine = create_engine(settings)
    assert isinstance(engine, DiffusersEngine)
    load_seconds = time.perf_counter() - started
    print(
        f"{args.engine}: loaded in {load_seconds:.1f} s on {engine.device} ({engine.dtype}); "
        f"image-to-video: {'yes' if engine.info.image_input else 'no'}",
        flush=True,
    )

    kinds = ["t2v"] if engine.t2v is not None else []
    if engine.info.image_input:
        kinds.append("i2v")
    results = []
    for kind in kinds:
        for mode in MODES:
            job = Job(
                task_id=f"smoke-{kind}-{mode}",
                prompt="a red fox running through fresh snow in a pine forest, morning light",
                mode=mode,
                ratio=args.ratio,
                images=[_test_image()] if kind == "i2v" else [],
                variations=1,
                duration=settings.duration,
                fps=settings.fps,
                resolution=settings.resolution,
            )
            render = engine.plan(job)
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            clip = engine.generate(job)[0]
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            frames = list(clip.frames)
            if cuda:
                peak = torch.cuda.max_memory_allocated() / 2**30
                peak_text = f"{peak:.2f} GiB GPU"
            else:
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
                peak_text = f"{peak:.2f} GiB RSS (CPU)"
            row = {
                "kind": kind,
                "mode": mode,
                "frames": len(frames),
                "width": clip.width,
                "height": clip.height,
                "render": f"{render.width}x{render.height}",
                "fps": clip.fps,
                "steps": engine.profiles[mode].steps,
                "seconds": round(seconds, 3),
                "frames_per_second": round(len(frames) / seconds, 3),
                "peak_gib": round(peak, 3),
                "peak_kind": "gpu" if cuda else "cpu_rss",
                "seed": clip.seed,
            }
            if args.out is not None:
                from openimagine.media.mp4 import encode_mp4

                path = args.out / f"{args.engine}-{kind}-{mode}.mp4"
                encode_mp4(frames, path, fps=clip.fps, width=clip.width, height=clip.height)
                row["mp4"] = str(path)
            results.append(row)
            print(
                f"{kind} {mode:6s} {len(frames)} frames {clip.width}x{clip.height} @ {clip.fps} fps, "
                f"{row['steps']} steps: {seconds:.2f} s/clip, {row['frames_per_second']:.2f} "
                f"frames/s, peak {peak_text}",
                flush=True,
            )
    if args.json:
        print(
            json.dumps(
                {
                    "engine": args.engine,
                    "load_seconds": round(load_seconds, 2),
                    "device": str(engine.device),
                    "clips": results,
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
