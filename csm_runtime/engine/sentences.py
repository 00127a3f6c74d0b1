"""Text for speech: what counts as speakable, and long text split into the pieces that are generated one by one.

CSM speaks one utterance per prompt and its KV cache holds the prompt plus the audio frames, so a long text is said
as a sequence of pieces (sentences, each generated with the previous ones as context; see longtext.py). The splitter
is deliberately small and predictable:

- a sentence ends at `.`, `!`, `?`, `…` (or runs of them) plus any closing quotes or brackets, when whitespace and a
  character that is not a lower-case letter follow, or the text ends; CJK `。！？` end one without whitespace;
- not after a known abbreviation (`Mr.`, `e.g.`, `No.`), an initial (`J. R. R. Tolkien`, `U.S.`), and not inside a
  number (`3.14` has no space after the dot);
- a blank line ends a paragraph and always ends a piece;
- a run longer than MAX_PIECE_CHARS (no punctuation at all, or one endless sentence) is broken at the last clause
  mark (`,;:` or a dash) or space before the limit, else cut hard;
- a piece with fewer than two letters (`1.` of a numbered list, a lone `…`) is joined to the next one.

`INVISIBLE` and `SPEAKABLE` are one character class seen from both sides: the server removes what `INVISIBLE` matches
and requires one match of `SPEAKABLE`; the OpenAPI schema publishes `SPEAKABLE` as the `input` pattern, so the
schema and the server agree on which texts are empty.
"""

from __future__ import annotations

import re

MAX_PIECE_CHARS = 300  # a piece's prompt rows and audio frames must fit the KV cache beside its context
MIN_PIECE_LETTERS = 2

# Control characters (but tab, newline, carriage return), soft hyphen, zero-width and direction marks, word joiners,
# the byte-order mark, interlinear annotation marks and lone surrogates: removed from the text, never spoken.
_INVISIBLE_RANGES = (
    r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u206f"
    r"\ufeff\ufff9-\ufffb\ud800-\udfff"
)
INVISIBLE = re.compile(f"[{_INVISIBLE_RANGES}]")
# One character that is neither whitespace nor invisible: the same class in Python and in ECMA-262 (JSON Schema).
SPEAKABLE = re.compile(f"[^\\s{_INVISIBLE_RANGES}]")
# The published form leaves out the lone surrogates: JSON cannot carry them (the server answers "not valid JSON").
SPEAKABLE_PATTERN = SPEAKABLE.pattern.replace(r"\ud800-\udfff", "")

_TITLES = "mr mrs ms mx dr prof st mt sr jr rev hon gen col lt sgt capt cmdr gov sen rep pres supt e.g i.e vs cf approx"
ABBREVIATIONS = frozenset(_TITLES.split())
_BEFORE_NUMBERS = "no nos vol fig figs eq ref p pp"
NUMBER_ABBREVIATIONS = frozenset(_BEFORE_NUMBERS.split())  # only before a number: `No. 5`
_TERMINAL = re.compile(r"[.!?…]+[\"'”’»)\]]*|[。！？]+[」』”’）]*")
_CJK_END = "。！？"
_OPENERS = "\"'“‘«([¿¡"
_CLAUSE = re.compile(r"[,;:—–]\s|\s[-—–]\s")


def clean(text: str) -> str:
    """The text without invisible characters (see INVISIBLE), line ends as `\\n`."""
    return INVISIBLE.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def is_speakable(text: str) -> bool:
    """Whether the text has one character to say (not only whitespace, control or zero-width characters)."""
    return SPEAKABLE.search(text) is not None


def split_sentences(text: str) -> list[str]:
    """Sentences in order, whitespace collapsed; paragraphs (blank lines) always end one. No length limit here."""
    out: list[str] = []
    for paragraph in re.split(r"\n[^\S\n]*\n\s*", clean(text)):
        flat = " ".join(paragraph.split())
        if flat:
            out.extend(_paragraph_sentences(flat))
    return out


def _paragraph_sentences(text: str) -> list[str]:
    sentences, start = [], 0
    for m in _TERMINAL.finditer(text):
        end = m.end()
        if _ends_sentence(text, m):
            piece = text[start:end].strip()
            if piece:
                sentences.append(piece)
            start = end
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def _ends_sentence(text: str, m: re.Match) -> bool:
    end = m.end()
    cjk = m.group()[0] in _CJK_END
    if end == len(text):
        return True
    if not text[end].isspace():
        return cjk  # `3.14`, `e.g.x`, `"Hi.""`: no boundary; `好。然后` is one
    following = text[end:].lstrip()
    nxt = following.lstrip(_OPENERS)[:1]
    if nxt.islower():
        return False  # `"Stop!" he said`, `etc. and so on`
    if m.group() != ".":
        return True  # `!`, `?`, `...`, or a dot followed by a closing quote
    before = text[: m.start()].split()
    word = before[-1].lstrip(_OPENERS) if before else ""
    return not _is_abbreviation(word, nxt)


def _is_abbreviation(word: str, following: str) -> bool:
    """`Mr`, `e.g`, `U.S`, `J`, `No` before a number: a dot after these does not end a sentence."""
    lower = word.lower()
    if lower in ABBREVIATIONS or (lower in NUMBER_ABBREVIATIONS and following.isdigit()):
        return True
    if len(word) == 1 and word.isalpha():
        return True  # an initial
    parts = word.split(".")
    return len(parts) > 1 and all(len(p) == 1 and p.isalpha() for p in parts)  # U.S, a.m


def speech_pieces(text: str, max_chars: int = MAX_PIECE_CHARS) -> list[str]:
    """What is generated one by one: sentences, long runs broken to `max_chars`, letterless bits joined forward."""
    pieces: list[str] = []
    for sentence in split_sentences(text):
        pieces.extend(_break_long(sentence, max_chars))
    return _join_letterless(pieces, max_chars)


def _break_long(text: str, max_chars: int) -> list[str]:
    out = []
    while len(text) > max_chars:
        window = text[: max_chars + 1]
        cut = max((m.start() + 1 for m in _CLAUSE.finditer(window) if m.start() + 1 <= max_chars), default=0)
        if cut < max_chars // 3:
            space = window.rfind(" ")
            cut = space if space >= max_chars // 3 else max_chars
        head, text = text[:cut].strip(), text[cut:].strip()
        if head:
            out.append(head)
    if text:
        out.append(text)
    return out


def _letters(text: str) -> int:
    return sum(ch.isalpha() for ch in text)


def _join_letterless(pieces: list[str], max_chars: int) -> list[str]:
    out: list[str] = []
    carry = ""
    for piece in pieces:
        if carry and len(carry) + 1 + len(piece) > max_chars:
            out.append(carry)
        elif carry:
            piece = f"{carry} {piece}"
        carry = ""
        if _letters(piece) < MIN_PIECE_LETTERS and len(piece) < max_chars:
            carry = piece
            continue
        out.append(piece)
    if carry:
        if out and len(out[-1]) + 1 + len(carry) <= max_chars:
            out[-1] = f"{out[-1]} {carry}"
        else:
            out.append(carry)
    return out
