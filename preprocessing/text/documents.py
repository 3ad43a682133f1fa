"""A source's documents as cleaned text: IMDb files, WikiText articles (by byte span) and
table rows; an unusable one (not UTF-8, empty) as a DataError, so the caller decides."""
from __future__ import annotations

import html
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


