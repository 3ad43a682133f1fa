"""A generated stand-in for IMDb: ``imdb`` writes movie reviews in the aclImdb layout
(train|test/pos|neg/<id>_<rating>.txt, train/unsup/<id>_0.txt, imdb.vocab).  A review is
a few paragraphs (joined by ``<br /><br />`` as in the real files) of neutral filler
sentences and sentiment-bearing clauses.  Each clause has a polarity and a weight:

  direct      "the acting was superb"                          +, weight 1
  negated     "the plot was never boring" / "was not clever"   the adjective's opposite, 1
  about me    "I did not care for the score"                   1
  contrast    "the acting was great but the plot was dull"     weights 1 then 2 (the "but" wins)
  verdict     "I would not recommend it" / "worth every minute"  weight 2

The label is the sign of the weighted sum (never a tie), so it is a function of the
text; a sequence model that reads negation and "but" can get it right, while every
sentiment word appears in both classes (negated ~40% of the time, in the losing half of
a contrast, or in a neutral sentence) and "not" / "never" appear in filler too, so a
bag of words is misled: a unigram logistic regression reaches 0.81 test accuracy on the
default sample (about 0.83 with bigrams; `python benchmarks/tokenize.py --logreg`), where a
model that reads the clauses can reach 1.0.
"""
from __future__ import annotations

import os
from pathlib import Path

from . import check_split_size

__all__ = ["imdb", "imdb_vocab"]

_POS_ADJ = (
    "great", "wonderful", "brilliant", "superb", "excellent", "gripping", "moving", "clever",
    "charming", "delightful", "stunning", "memorable", "fun", "beautiful", "powerful", "touching",
    "witty", "engaging", "fantastic", "terrific", "impressive", "smart", "fresh", "original",
    "solid", "compelling", "entertaining", "heartfelt", "inspired", "good",
)
_NEG_ADJ = (
    "dull", "boring", "awful", "terrible", "clumsy", "predictable", "weak", "lazy", "tedious",
    "bland", "forgettable", "painful", "silly", "messy", "flat", "lifeless", "pointless",
    "dreadful", "sloppy", "shallow", "confusing", "annoying", "cheap", "wooden", "stale", "bad",
    "poor", "uninspired", "overlong", "ridiculous",
)
_ASPECTS = (  # (noun phrase, verb)
    ("the acting", "was"), ("the plot", "was"), ("the script", "was"), ("the story", "was"),
    ("the dialogue", "was"), ("the direction", "was"), ("the pacing", "was"), ("the ending", "was"),
    ("the soundtrack", "was"), ("the score", "was"), ("the cinematography", "was"),
    ("the editing", "was"), ("the camera work", "was"), ("the humor", "was"),
    ("the lead performance", "was"), ("the villain", "was"), ("the final act", "was"),
    ("the first half", "was"), ("the premise", "was"), ("the production design", "was"),
    ("the film", "was"), ("the movie", "was"), ("this picture", "was"), ("the whole thing", "was"),
    ("the special effects", "were"), ("the characters", "were"), ("the performances", "were"),
    ("the jokes", "were"), ("the action scenes", "were"), ("the visuals", "were"),
    ("the twists", "were"), ("the supporting actors", "were"),
)
_INTENS = ("", "", "", "really ", "truly ", "genuinely ", "absolutely ", "quite ", "rather ", "pretty ", "very ")
_NEGATORS = ("not ", "never ", "hardly ", "far from ", "not at all ", "anything but ", "not really ", "in no way ")
_LIKE = ("loved", "enjoyed", "admired", "liked", "appreciated", "adored")
_DISLIKE = ("hated", "disliked", "could not stand", "was bored by", "was annoyed by", "regretted")
_NOT_LIKE = ("did not like", "did not enjoy", "did not care for", "never warmed to", "could not love")
_NOT_DISLIKE = ("did not mind", "did not hate", "never tired of", "could not fault", "had no problem with")
_VERDICT_POS = (
    "I loved it", "highly recommended", "I would recommend it to anyone", "worth every minute",
    "go and see it", "a must see", "I was never bored", "I would happily watch it again",
    "it is not to be missed", "I did not want it to end", "you will not regret it",
    "it never gets old", "I cannot recommend it enough", "ten out of ten from me",
)
_VERDICT_NEG = (
    "I hated it", "avoid it", "I would not recommend it", "not worth your time",
    "do not waste your money", "what a waste of time", "I will never watch it again",
    "I could not wait for it to end", "it is not worth watching", "skip this one",
    "I want those two hours back", "I do not get the hype", "I nearly walked out",
    "one out of ten from me",
)
_TITLES = (
    "The Long Road", "Midnight Harbor", "Silver Lake", "A Winter Journey", "The Last Letter",
    "Iron Valley", "Crimson Sky", "The Quiet Year", "Paper Moon Rising", "Dark Water",
    "The Glass House", "Northern Lights", "Summer of Thieves", "The Forgotten Coast",
    "Blue Horizon", "The Tenth Hour", "Wild Hearts", "Distant Thunder", "The Clockmaker",
    "City of Echoes",
)
_NAMES = (
    "John Carter", "Mary Ellis", "Robert Hale", "Susan Park", "David Moreno", "Linda Brooks",
    "James Whitaker", "Karen Novak", "Michael Reyes", "Helen Sato", "Peter Lang", "Anna Kowalski",
    "George Adams", "Laura Fischer", "Frank Dolan", "Grace Kim", "Tom Baker", "Emma Stone",
    "Paul Martin", "Julia Roberts",
)
_ROLES = (
    "a retired detective", "a young teacher", "two estranged sisters", "a small-town doctor",
    "a washed-up boxer", "a war veteran", "a pair of thieves", "a lonely astronaut",
    "a single father", "a journalist", "a group of students", "an aging rock star", "a ship captain",
    "a farmer and his son", "a rookie cop", "a famous chef",
)
_PLACES = (
    "Paris", "a small town in Ohio", "1970s New York", "a remote island", "London during the war",
    "a mining village", "the Texas desert", "a boarding school", "Tokyo", "a fishing port",
    "a space station", "Chicago in the twenties", "rural Ireland", "a hospital",
)
_FILLER = (
    "I saw it {when} {with}.", "It runs about {mins} minutes.", "The film was released in {year}.",
    "{name} plays {role}.", "It is based on a {source}.", "The story follows {role} in {place}.",
    "The film is set in {place}.", "My {rel} picked it.", "I had not heard of it before.",
    "I had not read the book.", "It is not a sequel.", "I never saw the original.",
    "There is a scene in {spot} that people talk about.", "{name} also directed {title}.",
    "The DVD has a commentary track.", "It was shot in {place}.", "{name} and {name2} star.",
    "I watched it twice.", "It came out the same year as {title}.", "The trailer gives little away.",
    "It was nominated for a few awards.", "It never played in many theaters.",
    "The running time is not short.", "Most of it takes place at night.",
    "I went in knowing nothing about it.", "It is in black and white for the first ten minutes.",
)
_WHEN = ("last week", "on a Sunday afternoon", "years ago", "on cable", "at a small cinema",
         "on a plane", "at a festival", "last night", "on DVD", "on a rainy evening")
_WITH = ("with my brother", "with friends", "alone", "with my wife", "with my kids", "with my father",
         "with a date", "with my roommate")
_SOURCES = ("novel", "play", "true story", "comic book", "short story", "TV series", "video game")
_RELS = ("friend", "wife", "husband", "father", "mother", "sister", "brother", "roommate")
_SPOTS = ("a diner", "the rain", "a train station", "an elevator", "a church", "a parking lot",
          "the desert", "a crowded bar")
_FIELDS = {"when": _WHEN, "with": _WITH, "name": _NAMES, "name2": _NAMES, "role": _ROLES,
           "source": _SOURCES, "place": _PLACES, "rel": _RELS, "spot": _SPOTS, "title": _TITLES}

_P_NEGATE = 0.4      # a clause is said with a negated adjective of the opposite polarity
_P_AGREE = 0.68      # a clause's polarity agrees with the review's label


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


class _Fields(dict):
    """format_map mapping that draws a filler field only when the template uses it."""

    def __init__(self, r):
        super().__init__()
        self.r = r

    def __missing__(self, key: str) -> str:
        r, c = self.r, _pick
        if key == "mins":
            return str(80 + int(r.random() * 100))
        if key == "year":
            return str(1950 + int(r.random() * 62))
        return c(r, _FIELDS[key])


def _pick(r, seq):
    return seq[int(r.random() * len(seq))]  # random.choice without its overhead


def _filler(r) -> str:
    return _pick(r, _FILLER).format_map(_Fields(r))


def _clause(r, p: int) -> str:
    """A clause of polarity p (+1/-1), direct or negated, about an aspect or about me."""
    c = lambda seq: _pick(r, seq)  # noqa: E731
    if r.random() < 0.25:  # "I ..." form
        neg = r.random() < _P_NEGATE
        verbs = (_NOT_DISLIKE if p > 0 else _NOT_LIKE) if neg else (_LIKE if p > 0 else _DISLIKE)
        return f"I {c(verbs)} {c(_ASPECTS)[0]}"
    noun, verb = c(_ASPECTS)
    if r.random() < _P_NEGATE:
        return f"{noun} {verb} {c(_NEGATORS)}{c(_NEG_ADJ if p > 0 else _POS_ADJ)}"
    return f"{noun} {verb} {c(_INTENS)}{c(_POS_ADJ if p > 0 else _NEG_ADJ)}"


def _review(r, label: int, min_words: int, max_words: int, agree: float = _P_AGREE) -> tuple[str, int]:
    """(text, score) of one review whose weighted polarity sum has the label's sign; each
    sentiment sentence agrees with the label with probability ``agree``."""
    target = r.randint(min_words, max_words)
    limit = max(min_words, max_words - 10)  # room for a closing verdict (<= 10 words)
    while True:
        sents, words, score = [], 0, 0
        while words < target:
            u = r.random()
            if u < 0.4:
                s = _filler(r)
            else:
                p = label if r.random() < agree else -label
                if u < 0.72:
                    s = _cap(_clause(r, p)) + "."
                    score += p
                elif u < 0.86:  # contrast: the second half wins
                    a, b = _clause(r, -p), _clause(r, p)
                    s = _cap(f"{a} but {b}.") if r.random() < 0.6 else f"Although {a}, {b}."
                    score += p  # -p * 1 + p * 2
                else:
                    s = _cap(_pick(r, _VERDICT_POS if p > 0 else _VERDICT_NEG)) + "."
                    score += 2 * p
            n = s.count(" ") + 1
            if words + n > limit and words >= min_words:
                if u >= 0.4:  # undo the sentence's score
                    score -= p if u < 0.86 else 2 * p
                break
            sents.append(s)
            words += n
        if score * label > 0:
            break
        if score == 0 or r.random() < 0.5:  # tip a tie or a near miss with a closing verdict
            sents.append(_cap(_pick(r, _VERDICT_POS if label > 0 else _VERDICT_NEG)) + ".")
            score += 2 * label
            if score * label > 0:
                break
    # paragraphs of a few sentences, joined the way the real files are
    paras, i = [], 0
    while i < len(sents):
        k = r.randrange(2, 7)
        paras.append(" ".join(sents[i : i + k]))
        i += k
    return "<br /><br />".join(paras), score


def imdb_vocab() -> list[str]:
    """Every word the review grammar can produce, sorted (what imdb.vocab lists)."""
    import re

    parts = (_POS_ADJ + _NEG_ADJ + tuple(a for a, _ in _ASPECTS) + ("was", "were", "but", "although", "I")
             + _INTENS + _NEGATORS + _LIKE + _DISLIKE + _NOT_LIKE + _NOT_DISLIKE + _VERDICT_POS
             + _VERDICT_NEG + _TITLES + _NAMES + _ROLES + _PLACES + _FILLER + _WHEN + _WITH + _SOURCES
             + _RELS + _SPOTS)
    words = set()
    for s in parts:
        words.update(w.lower() for w in re.findall(r"[A-Za-z][A-Za-z'-]*", re.sub(r"\{\w+\}", " ", s)))
    return sorted(words)


def imdb(out: str | Path, size: int = 5000, seed: int = 0, unsup: int | None = None,
         test_frac: float = 0.5, min_words: int = 30, max_words: int = 300, agree: float = _P_AGREE) -> dict:
    """Write generated movie reviews in the aclImdb layout; ``out`` becomes the aclImdb folder.

    ``out/train/{pos,neg}/<id>_<rating>.txt`` and ``out/test/{pos,neg}/...`` (ratings 7-10
    for pos, 1-4 for neg, as in the real set), ``out/train/unsup/<id>_0.txt`` (unlabelled
    reviews, half of each polarity) and ``out/imdb.vocab``.  ``size`` labelled reviews in
    all, ``round(size * test_frac)`` of them in test, each split balanced (pos and neg
    differ by at most one); ``unsup`` unlabelled ones (default: ``size``).  Reviews are
    ``min_words`` to ``max_words`` words long (uniform); each sentiment sentence agrees with
    the review's label with probability ``agree`` (the rest say the opposite, so a review
    is mixed and only the weighted sum of its sentences decides).  Deterministic for a seed;
    thousands of files a second (100 MB, 99,358 files: 8.8 s on 2 cores).  Existing
    files of the same name are overwritten.

    Returns ``{"train": n, "test": n, "unsup": n, "bytes": total, "path": str(out)}``.
    """
    import random

    if unsup is not None and unsup < 0:
        raise ValueError("unsup must be >= 0")
    if not 0.0 <= test_frac <= 1.0:
        raise ValueError("test_frac must be in [0, 1]")
    check_split_size(size, test_frac, "a training and a test review")
    if not 1 <= min_words <= max_words:
        raise ValueError("need 1 <= min_words <= max_words")
    if not 0.5 < agree <= 1.0:
        raise ValueError(f"agree must be in (0.5, 1], got {agree}")
    out = Path(out)
    unsup = size if unsup is None else unsup
    n_test = int(round(size * test_frac))
    plan = [("train", "pos", +1, (size - n_test + 1) // 2), ("train", "neg", -1, (size - n_test) // 2),
            ("test", "pos", +1, (n_test + 1) // 2), ("test", "neg", -1, n_test // 2),
            ("train", "unsup", 0, unsup)]
    total = 0
    for split, folder, label, n in plan:
        d = out / split / folder
        d.mkdir(parents=True, exist_ok=True)
        r = random.Random(f"imdb-{seed}-{split}-{folder}")
        for i in range(n):
            lab = label or (1 if i % 2 == 0 else -1)
            text, score = _review(r, lab, min_words, max_words, agree)
            if label == 0:
                rating = 0
            elif label > 0:
                rating = min(10, 6 + min(score, 4) + r.randrange(0, 2))
            else:
                rating = max(1, 5 - min(-score, 4) - r.randrange(0, 2))
            data = text.encode()
            with open(os.path.join(d, f"{i}_{rating}.txt"), "wb") as f:
                f.write(data)
            total += len(data)
    (out / "imdb.vocab").write_text("\n".join(imdb_vocab()) + "\n")
    return {"train": plan[0][3] + plan[1][3], "test": plan[2][3] + plan[3][3], "unsup": unsup,
            "bytes": total, "path": str(out)}

