"""Turning an uncased WordPiece model's output back into the words the user wrote.

An uncased tokenizer (the packaged all-MiniLM-L6-v2's, BERT's) lowercases, strips accents and
splits punctuation: decoding gives ``"what did frank zappa ' s band play?"`` where the user wrote
``Zappa's``. A rewrite mostly re-uses words of the question and the conversation, so each word of
the output is mapped back to the way it was written there: the tokenisation of every
whitespace-separated word of the context is a key, its original spelling the value, and the
output's word-pieces are matched greedily, longest key first. Words the model produced that are
nowhere in the context stay as decoded (lowercase). Sentence-initial capitals are not evidence
of a proper noun, so they count for little, and the output's first letter follows the question's.

Cased tokenizers (T5's SentencePiece) need none of this: :func:`needs_surface_restoration`
says which is which.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence

_INITIAL_WEIGHT = 0.1  # a capital at the start of a sentence says little about the word
_PART_WEIGHT = 0.5  # a part of a longer word ("Zappa" in "Zappa's") is weaker evidence
_ALNUM_RUN = re.compile(r"\w+")
_ATTACH_LEFT = {".", ",", "?", "!", ":", ";", ")", "]", "}", "%"}
_ATTACH_RIGHT = {"(", "[", "{", "$", "#"}
_JOINERS = {"'", "-", "/"}
# Words that are lowercase inside a sentence: seen only capitalised at a sentence start, they
# are still written lowercase elsewhere ("Besides X, what else ...").
_FUNCTION_WORDS = frozenset(
    "a an the and or but if of in on at to for from by with about as into after before during "
    "what when where which who whom whose why how did do does is are was were be been has have "
    "had can could will would should may might must not no any some other else there this that "
    "these those it its he she they them his her their him we you i".split()
)


def needs_surface_restoration(tokenizer) -> bool:
    """True for tokenizers that lowercase their input (their output cannot be cased)."""
    return bool(getattr(tokenizer, "do_lower_case", False))


def _words(pieces: Sequence[str]) -> list[str]:
    """WordPiece tokens -> tokenizer words (``##`` pieces glued to the previous one)."""
    words: list[str] = []
    for piece in pieces:
        if piece.startswith("##") and words:
            words[-1] += piece[2:]
        else:
            words.append(piece)
    return words


def _detokenize(words: Sequence[str]) -> str:
    """Join tokenizer words that matched nothing in the context, undoing punctuation splits."""
    out = ""
    glue_next = False
    for word in words:
        if out and not (glue_next or word in _ATTACH_LEFT or word in _JOINERS):
            out += " "
        out += word
        glue_next = word in _ATTACH_RIGHT or word in _JOINERS
    return out


class SurfaceRestorer:
    """Maps an uncased tokenizer's output back to the casing and spelling of its context.

    Args:
        tokenizer: the (uncased, WordPiece) tokenizer the model generates with.
        max_key_words: longest context word, in tokenizer words, that can be matched (e.g.
            ``U.S.`` is 4: ``u . s .``).
    """

    def __init__(self, tokenizer, max_key_words: int = 8) -> None:
        self.tokenizer = tokenizer
        self.max_key_words = max_key_words

    def _key(self, text: str) -> tuple[str, ...]:
        return tuple(_words(self.tokenizer.tokenize(text)))

    def lexicon(self, contexts: Sequence[str]) -> dict[tuple[str, ...], str]:
        """Tokenised form -> the spelling the context uses most (ignoring sentence starts)."""
        votes: dict[tuple[str, ...], Counter] = defaultdict(Counter)
        for context in contexts:
            for position, surface in enumerate(context.split()):
                key = self._key(surface)
                if position == 0 and surface.lower() in _FUNCTION_WORDS:
                    surface = surface.lower()
                # Punctuation alone is left to the detokeniser, which attaches it.
                if key and len(key) <= self.max_key_words and any(w.isalnum() for w in key):
                    votes[key][surface] += _INITIAL_WEIGHT if position == 0 else 1.0
                # A word with punctuation also teaches its parts ("Zappa's" -> "Zappa",
                # "jazz-rock" -> "jazz"), so that they match wherever the model puts them.
                parts = _ALNUM_RUN.findall(surface)
                if len(parts) > 1 or (parts and parts[0] != surface):
                    for part in parts:
                        part_key = self._key(part)
                        if part_key:
                            votes[part_key][part] += _PART_WEIGHT * (
                                _INITIAL_WEIGHT if position == 0 else 1.0
                            )
        return {key: counts.most_common(1)[0][0] for key, counts in votes.items()}

    def restore(self, token_ids: Sequence[int], contexts: Sequence[str], question: str) -> str:
        """The text of generated ``token_ids``, respelt from ``contexts`` (question included)."""
        pieces = self.tokenizer.convert_ids_to_tokens(
            [i for i in token_ids if i not in set(self.tokenizer.all_special_ids)]
        )
        words = _words(pieces)
        lexicon = self.lexicon([question, *contexts])
        longest = min(self.max_key_words, max((len(k) for k in lexicon), default=1))
        out: list[str] = []
        pending: list[str] = []  # unmatched tokenizer words, detokenised together
        i = 0
        while i < len(words):
            for size in range(min(longest, len(words) - i), 0, -1):
                surface = lexicon.get(tuple(words[i : i + size]))
                if surface is not None:
                    if pending:
                        out.append(_detokenize(pending))
                        pending = []
                    out.append(surface)
                    i += size
                    break
            else:
                pending.append(words[i])
                i += 1
        if pending:
            out.append(_detokenize(pending))
        text = _attach(out)
        first = question.strip()[:1]
        if text and first.isupper() and text[0].islower():
            text = text[0].upper() + text[1:]
        return text


def _attach(chunks: list[str]) -> str:
    """Join chunks with spaces, except before punctuation that belongs to the previous word."""
    text = ""
    for chunk in chunks:
        if text and not (
            chunk[:1] in _ATTACH_LEFT or chunk[:1] in _JOINERS or text[-1] in _JOINERS
        ):
            text += " "
        text += chunk
    return text
