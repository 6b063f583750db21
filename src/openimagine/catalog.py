"""The models a deployment serves: ``OPENIMAGINE_MODELS_FILE`` (TOML) read into a
``Catalog`` of ``Model``s, each an engine with its options, price and concurrency.

Without the file the catalog holds one model named after ``OPENIMAGINE_ENGINE``
with today's settings, so nothing changes for a deployment that has none.

Each model carries its own ``Settings`` (the deployment's, with the model's
price, variations, duration, resolution and engine options over them): the
runner and the engines read what they always read, per model.

A bad file is refused at start with one line (``CatalogError``) naming the
file, the model and the key. Upstream keys come from the environment variable
that ``api_key_env`` names, never from the file, and never appear in a repr.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from openimagine.engines import ENGINES, RELAY_ENGINES, engine_info
from openimagine.engines.base import EngineInfo
from openimagine.settings import Settings

# What each mode adds to the prompt sent upstream (upstream APIs have no mode field).
DEFAULT_MODE_PROMPTS = {
    "fun": "Playful, whimsical and colourful, with a light-hearted mood.",
    "normal": "",
    "spicy": "Bold, dramatic and intense, with high energy.",
}
# Upstream resolutions xAI offers; other engines take any short side.
XAI_RESOLUTIONS = (480, 720)
DEFAULT_RELAY_CONCURRENCY = 16
DEFAULT_TIMEOUT = 600.0

# Keys of a model that override the deployment's setting of the same name.
SETTING_KEYS = (
    "price",
    "variations",
    "duration",
    "fps",
    "resolution",
    "model_path",
    "i2v_model_path",
    "device",
    "dtype",
    "cpu_offload",
    "vae_tiling",
    "vae_slicing",
    "compile",
    "profiles",
    "test_sleep_seconds",
    "max_queue",
)
# What only a relay's table may say.
RELAY_KEYS = (
    "base_url",
    "base_urls",
    "api_key_env",
    "upstream_model",
    "fallbacks",
    "timeout",
    "images",
    "mode_prompts",
)
MODEL_KEYS = ("engine", "concurrency", *RELAY_KEYS, *SETTING_KEYS)
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class CatalogError(ValueError):
    """The models file cannot be served; the message is one line for the operator."""


@dataclass(frozen=True)
class Model:
    name: str
    engine: str
    settings: Settings = field(repr=False, compare=False)
    concurrency: int = 1
    # Relays only.
    base_urls: tuple[str, ...] = ()
    upstream_model: str | None = None
    api_key_env: str | None = None
    api_key: str | None = field(default=None, repr=False, compare=False)
    fallbacks: tuple[str, ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    images: str = "start"  # "start": the first image animates; "reference": all are references
    mode_prompts: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_MODE_PROMPTS))

    @property
    def relay(self) -> bool:
        return self.engine in RELAY_ENGINES

    @property
    def price(self) -> int:
        return self.settings.price

    @property
    def variations(self) -> int:
        return self.settings.variations

    @property
    def max_queue(self) -> int | None:
        """Pending tasks this model may hold before submissions get 503 (None: no cap)."""
        return self.settings.max_queue

    def info(self) -> EngineInfo:
        """What the model takes (modes, ratios, images), answered without loading it."""
        return engine_info(self.engine, self.settings)

    def describe(self) -> dict[str, Any]:
        """What ``openimagine models list`` shows: never the key, only its variable."""
        info = self.info()
        described: dict[str, Any] = {
            "name": self.name,
            "engine": self.engine,
            "price": self.price,
            "variations": self.variations,
            "concurrency": self.concurrency,
            "max_queue": self.max_queue,
            "duration": self.settings.duration,
            "resolution": self.settings.resolution,
            "modes": list(info.modes),
            "ratios": list(info.ratios),
            "image_input": info.image_input,
            "max_images": info.max_images,
        }
        if self.relay:
            described.update(
                base_urls=list(self.base_urls),
                upstream_model=self.upstream_model,
                api_key_env=self.api_key_env,
                fallbacks=list(self.fallbacks),
                timeout=self.timeout,
                images=self.images,
            )
        return described


@dataclass(frozen=True)
class Catalog:
    models: Mapping[str, Model]
    default: str
    source: Path | None = None

    def get(self, name: str) -> Model:
        return self.models[name]

    @property
    def names(self) -> list[str]:
        return list(self.models)

    def subset(self, names: list[str]) -> list[Model]:
        """The models ``names`` picks (``openimagine worker --models a,b``); all when empty."""
        unknown = [name for name in names if name not in self.models]
        if unknown:
            raise CatalogError(
                f"unknown model(s) {', '.join(unknown)} (models: {', '.join(self.models)})"
            )
        return [self.models[name] for name in names] if names else list(self.models.values())


def default_catalog(settings: Settings) -> Catalog:
    """One model named after the engine, with the deployment's settings (no models file)."""
    if settings.engine not in ENGINES:
        raise CatalogError(
            f"unknown engine {settings.engine!r} (engines: {', '.join(sorted(ENGINES))})"
        )
    if settings.engine in RELAY_ENGINES:
        raise CatalogError(
            f"the {settings.engine} engine relays to an upstream API: "
            "describe it in a models file (OPENIMAGINE_MODELS_FILE)"
        )
    model = Model(
        name=settings.engine,
        engine=settings.engine,
        settings=settings,
        concurrency=max(1, settings.workers),
    )
    return Catalog({model.name: model}, settings.engine)


def load_catalog(settings: Settings) -> Catalog:
    """The deployment's catalog: the models file when set, else ``default_catalog``."""
    if settings.models_file is None:
        return default_catalog(settings)
    path = settings.models_file
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except OSError as exc:
        raise CatalogError(f"models file {path}: cannot read it ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"models file {path}: not valid TOML ({exc})") from None
    try:
        return _parse(document, settings, path)
    except CatalogError as exc:
        raise CatalogError(f"models file {path}: {exc}") from None


def _parse(document: dict[str, Any], settings: Settings, path: Path) -> Catalog:
    unknown = sorted(set(document) - {"default", "models"})
    if unknown:
        raise CatalogError(
            f"unknown top-level key(s) {', '.join(unknown)} (known: default, models)"
        )
    tables = document.get("models")
    if not isinstance(tables, dict) or not tables:
        raise CatalogError("no [models.NAME] table")
    models: dict[str, Model] = {}
    for name, table in tables.items():
        if not MODEL_NAME.match(name):
            raise CatalogError(
                f"model name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)"
            )
        if not isinstance(table, dict):
            raise CatalogError(f"models.{name} must be a table")
        try:
            models[name] = _model(name, table, settings)
        except CatalogError as exc:
            raise CatalogError(f"models.{name}: {exc}") from None
    for model in models.values():
        for fallback in model.fallbacks:
            target = models.get(fallback)
            if target is None:
                raise CatalogError(f"models.{model.name}: fallback {fallback!r} names no model")
            if fallback == model.name:
                raise CatalogError(f"models.{model.name}: a model cannot fall back to itself")
            if not target.relay:
                raise CatalogError(
                    f"models.{model.name}: fallback {fallback!r} must be a relay "
                    f"model ({', '.join(RELAY_ENGINES)}); it runs {target.engine}"
                )
    default = document.get("default", next(iter(models)))
    if not isinstance(default, str) or default not in models:
        raise CatalogError(f"default {default!r} names no model (models: {', '.join(models)})")
    return Catalog(models, default, path)


def _resolution(value: object) -> object:
    """``480``, ``"480"`` or ``"480p"`` (xAI's spelling) → 480."""
    if isinstance(value, str) and re.fullmatch(r"\d{2,4}p?", value.strip()):
        return int(value.strip().rstrip("p"))
    return value


def _model(name: str, table: dict[str, Any], settings: Settings) -> Model:
    unknown = sorted(set(table) - set(MODEL_KEYS))
    if unknown:
        raise CatalogError(f"unknown key(s) {', '.join(unknown)} (known: {', '.join(MODEL_KEYS)})")
    engine = table.get("engine")
    if not isinstance(engine, str) or engine not in ENGINES:
        raise CatalogError(f"engine {engine!r} is not one of {', '.join(sorted(ENGINES))}")
    relay = engine in RELAY_ENGINES
    overrides = {key: table[key] for key in SETTING_KEYS if key in table}
    if engine == "xai":
        # xAI renders 480p or 720p; the deployment's resolution is for local engines.
        overrides.setdefault("resolution", XAI_RESOLUTIONS[0])
    if "resolution" in overrides:
        overrides["resolution"] = _resolution(overrides["resolution"])
    try:
        # Only what was set (environment or arguments) is carried over, so an engine
        # that follows its model card unless told otherwise still can tell.
        model_settings = Settings.model_validate(
            {
                **settings.model_dump(include=settings.model_fields_set),
                **overrides,
                "engine": engine,
            }
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise CatalogError(f"{where}: {first['msg']}") from None
    concurrency = _number(
        table, "concurrency", int, DEFAULT_RELAY_CONCURRENCY if relay else 1, low=1, high=1024
    )
    if not relay:
        relay_only = sorted(set(table) & set(RELAY_KEYS))
        if relay_only:
            raise CatalogError(
                f"{', '.join(relay_only)} only apply to relay engines ({', '.join(RELAY_ENGINES)})"
            )
        return Model(name, engine, model_settings, concurrency=concurrency)
    if engine == "xai" and model_settings.resolution not in XAI_RESOLUTIONS:
        raise CatalogError("resolution must be 480p or 720p for the xai engine")
    return Model(
        name,
        engine,
        model_settings,
        concurrency=concurrency,
        base_urls=_base_urls(table),
        upstream_model=_text(table, "upstream_model", required=True),
        api_key_env=_text(table, "api_key_env"),
        api_key=_api_key(table),
        fallbacks=tuple(_strings(table, "fallbacks")),
        timeout=_number(table, "timeout", float, DEFAULT_TIMEOUT, low=1, high=86_400),
        images=_choice(table, "images", ("start", "reference"), "start"),
        mode_prompts=_mode_prompts(table),
    )


def _text(table: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    value = table.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise CatalogError(f"{key} must be a non-empty string")
    return value.strip()


def _strings(table: dict[str, Any], key: str) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise CatalogError(f"{key} must be a list of strings")
    return value


def _number(
    table: dict[str, Any], key: str, kind: type, default: float, *, low: float, high: float
) -> Any:
    value = table.get(key, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (kind is int and not isinstance(value, int))
    ):
        raise CatalogError(f"{key} must be a{'n integer' if kind is int else ' number'}")
    if not low <= value <= high:
        raise CatalogError(f"{key} must be between {low:g} and {high:g}")
    return kind(value)


def _choice(table: dict[str, Any], key: str, allowed: tuple[str, ...], default: str) -> str:
    value = table.get(key, default)
    if value not in allowed:
        raise CatalogError(f"{key} must be one of {', '.join(allowed)}")
    return str(value)


def _base_urls(table: dict[str, Any]) -> tuple[str, ...]:
    if "base_url" in table and "base_urls" in table:
        raise CatalogError("give base_url or base_urls, not both")
    urls = (
        [_text(table, "base_url", required=True)]
        if "base_url" in table
        else _strings(table, "base_urls")
    )
    if not urls:
        raise CatalogError("a relay needs base_url (or base_urls)")
    for url in urls:
        if not re.match(r"^https?://[^/\s]+", str(url)):
            raise CatalogError(f"base URL {url!r} must start with http:// or https://")
    return tuple(str(url).rstrip("/") for url in urls)


def _api_key(table: dict[str, Any]) -> str | None:
    variable = _text(table, "api_key_env")
    if variable is None:
        return None
    value = os.environ.get(variable)
    if not value:
        raise CatalogError(f"api_key_env names {variable}, which is not set in the environment")
    return value


def _mode_prompts(table: dict[str, Any]) -> dict[str, str]:
    given = table.get("mode_prompts", {})
    if not isinstance(given, dict):
        raise CatalogError('mode_prompts must be a table of mode = "text"')
    unknown = sorted(set(given) - set(DEFAULT_MODE_PROMPTS))
    if unknown or not all(isinstance(text, str) for text in given.values()):
        raise CatalogError(f"mode_prompts takes strings for {', '.join(DEFAULT_MODE_PROMPTS)}")
    return {**DEFAULT_MODE_PROMPTS, **given}
