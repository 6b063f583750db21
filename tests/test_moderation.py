"""Prompt moderation: what a word list refuses, and what it must leave alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from openimagine.moderation import (
    ModerationPolicy,
    ModerationResult,
    WordListPolicy,
    load_policy,
    normalize,
)
from openimagine.settings import Settings


@pytest.fixture
def policy() -> WordListPolicy:
    return WordListPolicy.from_lines(["ass", "example", "red panda", "straße"])


def test_a_listed_word_is_refused_with_a_reason_for_the_logs(policy: WordListPolicy) -> None:
    result = policy.check("a photo of an example")
    assert result.allowed is False
    assert result.reason is not None and "example" in result.reason


def test_an_ordinary_prompt_is_allowed(policy: WordListPolicy) -> None:
    assert policy.check("a cat surfing at sunset") == ModerationResult(allowed=True, reason=None)


@pytest.mark.parametrize(
    "prompt",
    ["a classy classroom", "passing grass", "assassin's creed", "examples", "counterexample"],
)
def test_words_inside_other_words_do_not_match(policy: WordListPolicy, prompt: str) -> None:
    assert policy.check(prompt).allowed


@pytest.mark.parametrize(
    "prompt",
    ["ÉXAMPLE", "Exämple!", "ｅｘａｍｐｌｅ", "(example)", "an_example_here", "ex\u00adample"],
)
def test_case_accents_and_lookalike_forms_do_not_evade(policy: WordListPolicy, prompt: str) -> None:
    # Full-width letters, a soft hyphen inside the word, underscores around it.
    assert not policy.check(prompt).allowed


@pytest.mark.parametrize(
    "prompt", ["a RED-PANDA", "red  panda", "red...panda!", "red\npanda", "red_panda"]
)
def test_phrases_match_across_any_spaces_or_punctuation(
    policy: WordListPolicy, prompt: str
) -> None:
    assert not policy.check(prompt).allowed


def test_phrase_words_must_be_whole_and_adjacent(policy: WordListPolicy) -> None:
    assert policy.check("a red pandas parade").allowed
    assert policy.check("a red fox and a panda").allowed


def test_entries_are_folded_like_prompts(policy: WordListPolicy) -> None:
    # "straße" casefolds to "strasse": both spellings are caught.
    assert not policy.check("STRASSE").allowed
    assert not policy.check("Straße").allowed


def test_a_custom_list_file_replaces_the_default(tmp_path: Path) -> None:
    path = tmp_path / "words.txt"
    path.write_text(
        "# house rules\n\n   \nbroccoli\n  # indented comment\nmint chocolate   \n",
        encoding="utf-8",
    )
    policy = load_policy(Settings(data_dir=tmp_path, moderation_list=path))
    assert not policy.check("Steamed Broccoli").allowed
    assert not policy.check("mint-chocolate ice cream").allowed
    assert policy.check("house rules").allowed  # comments are not entries
    assert policy.check("child porn").allowed  # the default list is not merged in
    assert isinstance(policy, WordListPolicy) and policy.size == 2


def test_a_missing_custom_list_fails_at_startup(tmp_path: Path) -> None:
    # Running without moderation because of a typo in a path must not be silent.
    with pytest.raises(FileNotFoundError):
        load_policy(Settings(data_dir=tmp_path, moderation_list=tmp_path / "nope.txt"))


def test_an_empty_list_allows_everything(tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    path.write_text("# nothing here\n", encoding="utf-8")
    assert WordListPolicy(path).check("anything at all").allowed


def test_the_shipped_default_list_loads_and_refuses_the_obvious(tmp_path: Path) -> None:
    policy = load_policy(Settings(data_dir=tmp_path))
    assert isinstance(policy, WordListPolicy) and 20 <= policy.size <= 40
    assert not policy.check("Child-Porn video").allowed
    assert not policy.check("a BEHEADING video").allowed
    assert policy.check("a child flying a kite on the beach").allowed
    assert policy.check("a documentary about snuffing out candles").allowed


def test_any_object_with_check_is_a_policy() -> None:
    class AllowAll:
        def check(self, prompt: str) -> ModerationResult:
            return ModerationResult(allowed=True)

    policy: ModerationPolicy = AllowAll()
    assert policy.check("x").allowed


def test_normalize_folds_case_and_strips_accents() -> None:
    assert normalize("Crème Brûlée") == "creme brulee"
