"""Prompt moderation: a small policy interface and a word-list implementation.

The default policy is a short list of phrases shipped in
``openimagine/data/moderation_default.txt``; operators replace it with
``OPENIMAGINE_MODERATION_LIST`` or plug in their own ``ModerationPolicy``
(anything with a ``check(prompt)`` method).
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Protocol

from openimagine.settings import Settings

DEFAULT_LIST = "moderation_default.txt"


@dataclass(frozen=True)
class ModerationResult:
    allowed: bool
    # Why a prompt was refused, for logs only: never shown to the client, whose
    # message is the contract's fixed "Inappropriate content, ..." text.
    reason: str | None = None


class ModerationPolicy(Protocol):
    def check(self, prompt: str) -> ModerationResult: ...


def normalize(text: str) -> str:
    """Fold case and accents so "ÉXAMPLE", "example" and "ｅｘａｍｐｌｅ" compare equal.

    NFKD splits accents off letters (and maps compatibility forms such as
    full-width letters to plain ones); dropping combining marks removes the
    accents, and dropping format characters (soft hyphen, zero-width joiners)
    stops them being used to split a word invisibly.
    """
    folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", text).casefold())
    return "".join(
        ch for ch in folded if not unicodedata.combining(ch) and unicodedata.category(ch) != "Cf"
    )


# A "word character" is a letter or digit; underscore counts as punctuation so
# "child_abuse" reads like "child abuse".
_SEPARATORS = re.compile(r"[\W_]+")
_NOT_WORD_BEFORE = r"(?<![^\W_])"
_NOT_WORD_AFTER = r"(?![^\W_])"


class WordListPolicy:
    """Refuses prompts containing any listed word or phrase, as whole words.

    "ass" does not match "class"; the phrase "child abuse" matches
    "Child-Abuse" and "child ... abuse" across any run of spaces/punctuation.
    All entries are compiled into one regular expression, so checking costs
    one scan of the prompt however long the list is.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        with open(path, encoding="utf-8-sig") as handle:
            self._init(handle.read().splitlines(), source=os.fspath(path))

    @classmethod
    def from_lines(cls, lines: Iterable[str], *, source: str = "<lines>") -> WordListPolicy:
        policy = cls.__new__(cls)
        policy._init(lines, source=source)
        return policy

    def _init(self, lines: Iterable[str], *, source: str) -> None:
        self.source = source
        phrases: set[str] = set()
        for line in lines:
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            words = [word for word in _SEPARATORS.split(normalize(entry)) if word]
            if words:
                phrases.add(r"[\W_]+".join(re.escape(word) for word in words))
        self.size = len(phrases)
        # Longest first so the reason names the most specific entry that matched.
        alternatives = "|".join(sorted(phrases, key=lambda p: (-len(p), p)))
        self._pattern = (
            re.compile(f"{_NOT_WORD_BEFORE}(?:{alternatives}){_NOT_WORD_AFTER}")
            if phrases
            else None
        )

    def check(self, prompt: str) -> ModerationResult:
        if self._pattern is None:
            return ModerationResult(allowed=True)
        match = self._pattern.search(normalize(prompt))
        if match is None:
            return ModerationResult(allowed=True)
        return ModerationResult(
            allowed=False, reason=f"matched {match.group(0)!r} from {self.source}"
        )


def load_policy(settings: Settings) -> ModerationPolicy:
    """The configured list (``settings.moderation_list``) or the shipped default.

    A configured file that is missing raises at startup rather than silently
    running without moderation.
    """
    if settings.moderation_list is not None:
        return WordListPolicy(settings.moderation_list)
    text = resources.files("openimagine").joinpath("data").joinpath(DEFAULT_LIST).read_text("utf-8")
    return WordListPolicy.from_lines(text.splitlines(), source=f"openimagine/data/{DEFAULT_LIST}")
