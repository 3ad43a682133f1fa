"""A source's documents as cleaned text: IMDb files, WikiText articles (by byte span) and
table rows; an unusable one (not UTF-8, empty) as a DataError, so the caller decides."""
from __future__ import annotations

import html
import re
from typing import Iterator

from .. import DataError, open_regular


def fixup(text: str) -> str:
    """Lesson 10's clean-up of scraped text: <br /> tags to newlines, HTML entities
    (also the IMDb dump's bare ``#39;``), WikiText's `` @-@ `` style joins."""
    if "<br" in text:
        text = text.replace("<br /><br />", "\n").replace("<br />", "\n").replace("<br>", "\n")
    if "#39;" in text or "quot;" in text:
        text = text.replace("&#39;", "'").replace("#39;", "'").replace("&quot;", '"').replace("quot;", '"')
    if "&" in text:
        text = html.unescape(text)
    if " @" in text:
        text = text.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    return text


CASE_MARKERS = ("xxup", "xxmaj")  # fastai's TK_UP and TK_MAJ
_LETTERS = r"[^\W\d_]"  # a letter
# a run of letters that does not start with a-z: the words that may take a marker (the rest,
# most of English, the regex skips without a Python call a word)
_WORD = re.compile(rf"(?<!{_LETTERS})[^\W\d_a-z]{_LETTERS}*")
_MARKED = re.compile(rf"(xxup|xxmaj) ({_LETTERS}+)")
_RUN = re.compile(rf"{_LETTERS}+")


def _unmark_word(m: re.Match) -> str:
    word = m.group(2)
    return word.upper() if m.group(1) == "xxup" else word[:1].upper() + word[1:]


def _mark_word(m: re.Match) -> str:
    w = m.group(0)
    if len(w) < 2:
        return w
    low = w.lower()
    if w.isupper():
        marker, back = "xxup", low.upper()
    elif w[1:].islower():
        marker, back = "xxmaj", low[:1].upper() + low[1:]
    else:  # mixed case ("McCoy") stays as written
        return w
    # only what unmark_case gives back exactly (not "İstanbul": its lower case grows a combining dot)
    return f"{marker} {low}" if back == w and _RUN.fullmatch(low) else w


def mark_case(text: str) -> str:
    """Lesson 10's case rules (fastai's replace_all_caps and deal_caps): a word of capitals
    becomes "xxup" + the word in lower case, a capitalised one "xxmaj" + it in lower case,
    so that "Movie", "MOVIE" and "movie" share one piece and the case is a token of its own.
    A word (a run of letters) of one letter, of mixed case ("McCoy"), or one whose lower
    case would not come back exactly, stays as written. unmark_case is the inverse."""
    return _WORD.sub(_mark_word, text)


def unmark_case(text: str) -> str:
    """mark_case's inverse: "xxup word" -> "WORD", "xxmaj word" -> "Word". Exact for any
    text without these marker words of its own (a literal "xxup word" comes back as "WORD")."""
    return _MARKED.sub(_unmark_word, text) if "xx" in text else text


def _decode_utf8(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start})") from None


def is_title(line: bytes) -> bool:
    """A WikiText article title ` = Title = `; sections are ` = = Section = = `."""
    s = line.strip()
    return len(s) > 4 and s[:2] == b"= " and s[-2:] == b" =" and s[2:3] != b"="


def wikitext_articles(path: str, start: int, stop: int) -> Iterator[tuple[int, bytes]]:
    """(byte offset, raw text) of each article whose title line starts in [start, stop).
    The text before the first title belongs to the span that starts at 0."""
    with open_regular(path) as f:
        if start > 0:
            f.seek(start - 1)
            f.readline()  # to the first line that starts at or after `start`
        pos = f.tell()
        lines: list[bytes] | None = [] if start == 0 else None
        at = pos
        for line in f:
            if is_title(line):
                if pos >= stop:
                    break
                if lines and b"".join(lines).strip():
                    yield at, b"".join(lines)
                lines, at = [line], pos
            elif lines is not None:
                lines.append(line)
            pos += len(line)
        if lines and b"".join(lines).strip():
            yield at, b"".join(lines)


def iter_docs(kind: str, chunk) -> Iterator[tuple[str | DataError, int]]:
    """(cleaned text, label) of each document of a chunk, or (DataError, label) for one
    that cannot be used (not UTF-8, empty), so the caller decides: skip or fail."""
    if kind == "imdb":
        for path, label in chunk:
            try:
                with open_regular(path) as f:  # a FIFO is a DataError, never opened
                    text = fixup(_decode_utf8(f.read(), str(path)))
                if not text.strip():
                    raise DataError(f"{path}: empty document")
                yield text, label
            except OSError as e:
                yield DataError(f"{path}: unreadable ({e.strerror or e})"), label
            except DataError as e:
                yield e, label
    elif kind == "wikitext":
        path, start, stop = chunk
        for at, raw in wikitext_articles(path, start, stop):
            try:
                yield fixup(_decode_utf8(raw, f"{path}: article at byte {at}")), -1
            except DataError as e:
                yield e, -1
    else:  # table rows: (path, first row, texts, labels)
        path, first, texts, labels = chunk
        for i, (text, label) in enumerate(zip(texts, labels)):
            text = fixup(text) if text else ""
            if not text.strip():
                yield DataError(f"{path}: row {first + i}: empty document"), int(label)
            else:
                yield text, int(label)


