"""Relay engines: models whose tasks another video API renders (xAI's Grok
Imagine, any OpenAI-videos server). See ``engine.py`` for what every relay
guarantees, and ``xai.py`` / ``openai_videos.py`` for each upstream's shapes."""

from __future__ import annotations

from openimagine.engines.upstream.engine import RelayEngine
from openimagine.settings import Settings

__all__ = ["RelayEngine", "relay_engine"]


def relay_engine(settings: Settings) -> RelayEngine:
    """The registry's factory: a relay needs a model of the models file, not just settings."""
    raise ValueError(
        f"the {settings.engine} engine relays to an upstream API: describe it "
        "in a models file (OPENIMAGINE_MODELS_FILE)"
    )
