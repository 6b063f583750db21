"""Engine registry: ``OPENIMAGINE_ENGINE`` names one of these.

Engines are created lazily, once per worker process, so that importing
openimagine never imports torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from openimagine.engines.base import Engine, EngineInfo
from openimagine.settings import Settings


@dataclass(frozen=True)
class EngineEntry:
    name: str
    # "module:attribute" of a callable ``(settings) -> Engine``.
    factory: str
    # "module:attribute" of the engine's ``EngineInfo`` (importable without heavy deps).
    info: str
    # Python modules the engine needs, to report whether it can run here.
    requires: tuple[str, ...] = ()
    # "module:attribute" of ``(name, settings) -> EngineInfo`` when what the
    # engine supports depends on its settings (a diffusers engine takes images
    # only with an image-to-video model); answered without loading the engine.
    configured: str | None = None


ENGINES: dict[str, EngineEntry] = {
    "preview": EngineEntry(
        "preview",
        factory="openimagine.engines.preview:PreviewEngine",
        info="openimagine.engines.preview:INFO",
    ),
    "wan": EngineEntry(
        "wan",
        factory="openimagine.engines.diffusers.engine:wan",
        info="openimagine.engines.diffusers.families:WAN_INFO",
        requires=("torch", "diffusers", "transformers"),
        configured="openimagine.engines.diffusers.families:configured_info",
    ),
    "ltx": EngineEntry(
        "ltx",
        factory="openimagine.engines.diffusers.engine:ltx",
        info="openimagine.engines.diffusers.families:LTX_INFO",
        requires=("torch", "diffusers", "transformers"),
        configured="openimagine.engines.diffusers.families:configured_info",
    ),
    "cogvideox": EngineEntry(
        "cogvideox",
        factory="openimagine.engines.diffusers.engine:cogvideox",
        info="openimagine.engines.diffusers.families:COGVIDEOX_INFO",
        requires=("torch", "diffusers", "transformers"),
        configured="openimagine.engines.diffusers.families:configured_info",
    ),
    # Relays: they render nothing here; they hand each task to another video API
    # (``engines/upstream``) and are built from a model of the models file.
    "xai": EngineEntry(
        "xai",
        factory="openimagine.engines.upstream:relay_engine",
        info="openimagine.engines.upstream.xai:INFO",
    ),
    "openai-videos": EngineEntry(
        "openai-videos",
        factory="openimagine.engines.upstream:relay_engine",
        info="openimagine.engines.upstream.openai_videos:INFO",
    ),
    "test-sleep": EngineEntry(
        "test-sleep",
        factory="openimagine.engines.testing:SleepEngine",
        info="openimagine.engines.testing:SLEEP_INFO",
    ),
    "test-fail": EngineEntry(
        "test-fail",
        factory="openimagine.engines.testing:FailEngine",
        info="openimagine.engines.testing:FAIL_INFO",
    ),
    "test-crash": EngineEntry(
        "test-crash",
        factory="openimagine.engines.testing:CrashEngine",
        info="openimagine.engines.testing:CRASH_INFO",
    ),
}


RELAY_ENGINES = ("xai", "openai-videos")


class UnknownEngine(ValueError):
    pass


def _resolve(ref: str) -> object:
    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module), attribute)


def engine_entry(name: str) -> EngineEntry:
    try:
        return ENGINES[name]
    except KeyError:
        raise UnknownEngine(
            f"unknown engine {name!r} (engines: {', '.join(sorted(ENGINES))})"
        ) from None


def engine_info(name: str, settings: Settings | None = None) -> EngineInfo:
    """What engine ``name`` supports; with ``settings``, as configured by them."""
    entry = engine_entry(name)
    if settings is not None and entry.configured is not None:
        configured: Callable[[str, Settings], EngineInfo] = _resolve(entry.configured)  # type: ignore[assignment]
        return configured(name, settings)
    info = _resolve(entry.info)
    assert isinstance(info, EngineInfo)
    return info


def create_engine(settings: Settings) -> Engine:
    factory: Callable[[Settings], Engine] = _resolve(engine_entry(settings.engine).factory)  # type: ignore[assignment]
    return factory(settings)
