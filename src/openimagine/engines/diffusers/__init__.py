"""Engines over Hugging Face diffusers: ``wan``, ``ltx`` and ``cogvideox``.

This package imports neither torch nor diffusers: ``families`` (rules and the
``*_INFO`` objects), ``profiles`` and ``tiny`` (until ``make_tiny`` runs) are
plain Python; only ``engine`` loads the heavy stack, when an engine is created.
"""

from openimagine.engines.diffusers.families import COGVIDEOX_INFO, FAMILIES, LTX_INFO, WAN_INFO

__all__ = ["COGVIDEOX_INFO", "FAMILIES", "LTX_INFO", "WAN_INFO"]
