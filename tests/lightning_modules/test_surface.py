"""Respelling an uncased tokenizer's output from the question and its history."""

from __future__ import annotations

from transformers import T5TokenizerFast

from lightning_modules.surface import SurfaceRestorer, needs_surface_restoration


def restore(tokenizer, output: str, question: str, history: list[str]) -> str:
    ids = tokenizer(output)["input_ids"]  # lowercased, with [CLS]/[SEP] like a generation
    return SurfaceRestorer(tokenizer).restore(ids, history, question)


def test_names_get_the_casing_of_the_history(tokenizer):
    out = restore(
        tokenizer,
        "what did the band play in paris",
        "What did they play?",
        ["The Band played in Paris"],
    )
    # "The" at a sentence start is not evidence; "Band" and "Paris" inside the turn are.
    assert out == "What did the Band play in Paris"


def test_punctuation_is_attached_as_the_context_wrote_it(tokenizer):
    out = restore(tokenizer, "what's the capital of france?", "what is it?", ["France's capital"])
    assert out == "what's the capital of France?"


def test_possessive_of_a_context_word(tokenizer):
    out = restore(tokenizer, "who is paris's star", "who is the star?", ["Paris"])
    assert out == "who is Paris's star"


def test_words_missing_from_the_context_stay_as_decoded(tokenizer):
    out = restore(tokenizer, "how fast is the car", "How fast is it?", ["the dog"])
    assert out == "How fast is the car"


def test_function_words_seen_only_at_a_sentence_start_stay_lowercase(tokenizer):
    out = restore(tokenizer, "besides the band, what else", "what else?", ["What band"])
    assert out == "besides the band, what else"


def test_the_first_letter_follows_the_question(tokenizer):
    assert restore(tokenizer, "besides the band", "What else?", []) == "Besides the band"
    assert restore(tokenizer, "besides the band", "what else?", []) == "besides the band"


def test_only_lowercasing_tokenizers_need_it(tokenizer, tmp_path):
    assert needs_surface_restoration(tokenizer)
    assert not needs_surface_restoration(object())
    assert not needs_surface_restoration(T5TokenizerFast.__new__(T5TokenizerFast))
