"""``DiffusersEngine``: Wan, LTX-Video and CogVideoX through Hugging Face diffusers.

One engine instance is created per worker process and keeps its pipelines
resident; ``generate`` runs in the runner's worker thread. Weights load only
from local folders (``OPENIMAGINE_MODEL_PATH`` for text-to-video,
``OPENIMAGINE_I2V_MODEL_PATH`` for image-to-video; the same folder may serve
both when one checkpoint does both, as LTX-Video and Wan 2.2 TI2V do).

Importing this module imports torch and diffusers; the registry imports only
``families`` (for ``*_INFO``) until an engine is actually created.
"""

from __future__ import annotations

import gc
import logging
import os
import secrets
import threading
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

# Set before diffusers/transformers/huggingface_hub are imported: nothing may
# reach for a hub from a worker.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import diffusers
import numpy as np
import torch
from PIL import Image, ImageOps

from openimagine.engines.base import Cancelled, Clip, EngineInfo, Job
from openimagine.engines.diffusers.families import (
    COGVIDEOX_INFO,
    FAMILIES,
    INFOS,
    KNOBS,
    LTX_INFO,
    WAN_INFO,
    Family,
    Plan,
    model_class_name,
    plan,
)
from openimagine.engines.diffusers.profiles import Profile, ProfileError, load_profiles
from openimagine.settings import Settings

__all__ = ["COGVIDEOX_INFO", "LTX_INFO", "WAN_INFO", "DiffusersEngine", "cogvideox", "ltx", "wan"]

log = logging.getLogger(__name__)

# Share of the progress bar given to denoising; the rest is VAE decoding.
DENOISE_SHARE = 0.95
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

# diffusers renamed from_pretrained's ``torch_dtype`` to ``dtype`` (and warns on the old name).
DTYPE_ARGUMENT = (
    "dtype"
    if hasattr(diffusers.utils.deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE")
    else "torch_dtype"
)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(
            f"OPENIMAGINE_DEVICE: unknown device {name!r} (auto, cpu, cuda, cuda:1...)"
        ) from None


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        # Half precision on CPUs is slow or unsupported for many kernels.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise ValueError(
            f"OPENIMAGINE_DTYPE: unknown dtype {name!r} (auto, {', '.join(DTYPES)})"
        ) from None


class DiffusersEngine:
    """Renders jobs with one diffusers video family; see docs/engines.md."""

    info: EngineInfo

    def __init__(self, settings: Settings, family: str = "wan") -> None:
        if family not in FAMILIES:
            raise ValueError(
                f"unknown diffusers family {family!r} (families: {', '.join(FAMILIES)})"
            )
        self.family: Family = FAMILIES[family]
        if settings.model_path is None and settings.i2v_model_path is None:
            raise ValueError(
                f"the {family} engine needs local model weights: set OPENIMAGINE_MODEL_PATH to a "
                f"diffusers folder (e.g. {self.family.examples[0]} downloaded with "
                "`huggingface-cli download`), and OPENIMAGINE_I2V_MODEL_PATH for image-to-video"
            )
        self.settings = settings
        # Which output knobs the operator chose; the others follow the model card.
        self.explicit = frozenset(k for k in KNOBS if k in settings.model_fields_set)
        self.profiles: dict[str, Profile] = load_profiles(family, settings.profiles)
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        self.offload = settings.cpu_offload and self.device.type != "cpu"
        if settings.cpu_offload and not self.offload:
            log.warning("OPENIMAGINE_CPU_OFFLOAD ignored: the device is the CPU")
        self._lock = threading.Lock()
        self._offload_owner: Any = None

        self.t2v, self.i2v = self._load(settings.model_path, settings.i2v_model_path)
        for pipe in self._pipes():
            self._prepare(pipe)
        self._schedulers = {id(pipe): self._mode_schedulers(pipe) for pipe in self._pipes()}
        self.info = replace(INFOS[family], image_input=self.i2v is not None)
        log.info(
            "%s engine ready on %s (%s): text-to-video %s, image-to-video %s",
            family,
            self.device,
            str(self.dtype).removeprefix("torch."),
            "yes" if self.t2v is not None else "no",
            "yes" if self.i2v is not None else "no",
        )

    # ------------------------------------------------------------- loading

    def _pipes(self) -> list[Any]:
        pipes = [p for p in (self.t2v, self.i2v) if p is not None]
        return pipes if len(pipes) < 2 or pipes[0] is not pipes[1] else pipes[:1]

    def _load_dtypes(self) -> dict[str, torch.dtype]:
        dtypes = {"default": self.dtype}
        if self.family.name == "wan":
            # Wan's docs keep the VAE (and the CLIP image encoder) in float32.
            dtypes["vae"] = torch.float32
            dtypes["image_encoder"] = torch.float32
        return dtypes

    def _from_pretrained(self, class_name: str, path: Path) -> Any:
        pipeline_class = getattr(diffusers, class_name)
        log.info("loading %s from %s", class_name, path)
        return pipeline_class.from_pretrained(
            path, **{DTYPE_ARGUMENT: self._load_dtypes()}, local_files_only=True
        )

    def _check_family(self, class_name: str, path: Path, variable: str) -> None:
        if not class_name.startswith(self.family.prefix):
            raise ValueError(
                f"{variable}={path} holds a {class_name} model, but OPENIMAGINE_ENGINE="
                f"{self.family.name} expects {self.family.t2v_class} or {self.family.i2v_class}"
            )

    def _load(self, model_path: Path | None, i2v_path: Path | None) -> tuple[Any, Any]:
        t2v = i2v = None
        if model_path is not None:
            model_path = Path(model_path).expanduser().resolve()
            name = model_class_name(model_path, "OPENIMAGINE_MODEL_PATH")
            self._check_family(name, model_path, "OPENIMAGINE_MODEL_PATH")
            if name == self.family.i2v_class:
                # An image-to-video checkpoint cannot render from text alone.
                if i2v_path is not None and Path(i2v_path).expanduser().resolve() != model_path:
                    raise ValueError(
                        f"OPENIMAGINE_MODEL_PATH={model_path} is an image-to-video model "
                        f"({name}); point it at a text-to-video model"
                    )
                log.warning("%s is image-to-video only: text-only tasks will fail", model_path)
                i2v_path = model_path
            else:
                t2v = self._from_pretrained(self.family.t2v_class, model_path)
        if i2v_path is not None:
            i2v_path = Path(i2v_path).expanduser().resolve()
            name = model_class_name(i2v_path, "OPENIMAGINE_I2V_MODEL_PATH")
            self._check_family(name, i2v_path, "OPENIMAGINE_I2V_MODEL_PATH")
            i2v_class = getattr(diffusers, self.family.i2v_class)
            if t2v is not None and i2v_path == model_path:
                # One checkpoint for both: share the modules, no second copy in memory.
                i2v = i2v_class.from_pipe(t2v)
            else:
                i2v = self._from_pretrained(self.family.i2v_class, i2v_path)
        return t2v, i2v

    def _prepare(self, pipe: Any) -> None:
        settings = self.settings
        if self.offload:
            pipe.enable_model_cpu_offload(device=self.device)
            self._offload_owner = pipe
        else:
            pipe.to(self.device)
        if settings.vae_tiling:
            pipe.vae.enable_tiling()
        if settings.vae_slicing:
            pipe.vae.enable_slicing()
        if settings.compile:
            for name in ("transformer", "transformer_2"):
                module = getattr(pipe, name, None)
                # nn.Module.compile compiles in place and keeps the module (and its config).
                if module is not None and not getattr(module, "_compiled_call_impl", None):
                    module.compile()
        pipe.set_progress_bar_config(disable=True)
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                component.eval()

    def _mode_schedulers(self, pipe: Any) -> dict[str, Any]:
        """One scheduler per mode: the model's own, or a copy with the profile's flow shift."""
        base = pipe.scheduler
        schedulers = {}
        for mode, profile in self.profiles.items():
            if profile.flow_shift is None:
                schedulers[mode] = base
                continue
            config = base.config
            if "flow_shift" in config:
                schedulers[mode] = type(base).from_config(config, flow_shift=profile.flow_shift)
            elif "shift" in config and not config.get("use_dynamic_shifting", False):
                schedulers[mode] = type(base).from_config(config, shift=profile.flow_shift)
            else:
                raise ProfileError(
                    f"profile [{self.family.name}.{mode}] sets flow_shift, but this model's "
                    f"scheduler ({type(base).__name__}) has no static flow shift; remove it"
                )
        return schedulers

    def _fixed_size(self, pipe: Any) -> tuple[int, int] | None:
        """The only size a model renders at, if it has one (CogVideoX-5b-I2V)."""
        config = pipe.transformer.config
        if getattr(config, "use_learned_positional_embeddings", False):
            scale = pipe.vae_scale_factor_spatial
            return config.sample_width * scale, config.sample_height * scale
        return None

    # ---------------------------------------------------------- generation

    def plan(self, job: Job) -> Plan:
        pipe = self.i2v if job.images else self.t2v
        return plan(
            self.family,
            job.ratio,
            duration=job.duration,
            fps=job.fps,
            resolution=job.resolution,
            explicit=self.explicit,
            fixed_size=self._fixed_size(pipe) if pipe is not None else None,
        )

    def generate(self, job: Job) -> list[Clip]:
        with self._lock:
            return self._generate(job)

    def _generate(self, job: Job) -> list[Clip]:
        if job.images and self.i2v is None:
            raise ValueError(
                f"the {self.family.name} engine has no image-to-video model "
                "(set OPENIMAGINE_I2V_MODEL_PATH)"
            )
        if not job.images and self.t2v is None:
            raise ValueError(
                f"the {self.family.name} engine has no text-to-video model "
                "(set OPENIMAGINE_MODEL_PATH)"
            )
        pipe = self.i2v if job.images else self.t2v
        render = self.plan(job)
        profile = self.profiles.get(job.mode) or self.profiles["normal"]
        kwargs = self._call_arguments(pipe, job, render, profile)
        clips: list[Clip] = []
        try:
            if self.offload and self._offload_owner is not pipe:
                # Pipelines sharing modules share offload hooks: the one about to run owns them.
                pipe.enable_model_cpu_offload(device=self.device)
                self._offload_owner = pipe
            pipe.scheduler = self._schedulers[id(pipe)][
                job.mode if job.mode in self.profiles else "normal"
            ]
            for index in range(job.variations):
                if job.is_cancelled():
                    raise Cancelled(job.task_id)
                seed = secrets.randbits(31)
                generator = torch.Generator(device="cpu").manual_seed(seed)
                output = pipe(
                    **kwargs,
                    generator=generator,
                    callback_on_step_end=self._step_callback(job, index),
                )
                clips.append(self._clip(output.frames[0], render, seed))
                job.on_progress(min(1.0, (index + 1) / job.variations))
        except BaseException as error:
            # The traceback keeps the pipeline's frames alive, and with them its
            # GPU tensors: drop their locals (the traceback still prints), then
            # free memory so the worker survives to serve the next task.
            traceback.clear_frames(error.__traceback__)
            self._recover(pipe)
            raise
        return clips

    def _call_arguments(
        self, pipe: Any, job: Job, render: Plan, profile: Profile
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "prompt": job.prompt + profile.prompt_suffix,
            "negative_prompt": profile.negative_prompt or None,
            "height": render.height,
            "width": render.width,
            "num_frames": render.frames,
            "num_inference_steps": profile.steps,
            "guidance_scale": profile.guidance,
            "output_type": "np",
        }
        if job.images:
            kwargs["image"] = ImageOps.fit(
                job.images[0].convert("RGB"),
                (render.width, render.height),
                Image.Resampling.LANCZOS,
            )
        if self.family.name == "ltx":
            # LTX-Video conditions its rotary embeddings on the frame rate.
            kwargs["frame_rate"] = render.fps
            if pipe.vae.config.timestep_conditioning:
                # LTX-Video 0.9.1+ decodes with a little noise (its model card's values).
                kwargs["decode_timestep"] = 0.03
                kwargs["decode_noise_scale"] = 0.025
        if self.family.name == "cogvideox":
            # The text length is baked into CogVideoX's positional embeddings.
            kwargs["max_sequence_length"] = pipe.transformer.config.max_text_seq_length
        return kwargs

    def _step_callback(self, job: Job, index: int) -> Any:
        variations = job.variations

        def on_step_end(
            pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]
        ) -> dict[str, Any]:
            if job.is_cancelled():
                raise Cancelled(job.task_id)
            total = max(1, pipe.num_timesteps)
            done = (index + min(1.0, (step + 1) / total)) / variations
            job.on_progress(DENOISE_SHARE * done)
            return tensors

        return on_step_end

    def _clip(self, video: Any, render: Plan, seed: int) -> Clip:
        """Float frames in 0..1 -> uint8 RGB, centre-cropped to the planned output size."""
        video = np.asarray(video)
        top = (render.height - render.out_height) // 2
        left = (render.width - render.out_width) // 2
        video = video[:, top : top + render.out_height, left : left + render.out_width, :3]
        frames = np.clip(np.nan_to_num(video) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Clip(
            frames=list(frames),
            fps=render.fps,
            width=render.out_width,
            height=render.out_height,
            seed=seed,
        )

    def _recover(self, pipe: Any) -> None:
        """After a failure or cancellation: give memory back so the next task can run."""
        try:
            if self.offload:
                # Move whatever the interrupted call left on the GPU back to the CPU.
                pipe.maybe_free_model_hooks()
        except Exception:  # pragma: no cover - best effort on an already failing path
            log.exception("could not reset offload hooks after a failure")
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def wan(settings: Settings) -> DiffusersEngine:
    return DiffusersEngine(settings, "wan")


def ltx(settings: Settings) -> DiffusersEngine:
    return DiffusersEngine(settings, "ltx")


def cogvideox(settings: Settings) -> DiffusersEngine:
    return DiffusersEngine(settings, "cogvideox")
