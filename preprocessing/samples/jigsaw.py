"""A generated stand-in for Kaggle's Jigsaw toxic comment data: ``jigsaw`` writes
``train.csv`` (id, comment_text, toxic, severe_toxic, obscene, threat, insult,
identity_hate) and ``test.csv`` (id, comment_text), as the competition ships them: 16-hex
ids, quoted comments with commas, quotes and newlines in them.

A comment is a few sentences of wiki talk-page chatter ("Please see the talk page before
reverting.") and, for a toxic one, sentences that carry its labels:

  toxic          about 10 % of comments; a rude sentence ("Nobody cares about your edits")
  insult         half the toxic ones: "you are a pathetic idiot"
  obscene        half the toxic ones: mild swearing ("this crap article")
  severe_toxic   a tenth of the toxic ones, never without toxic: more of it, in capitals
  identity_hate  0.9 %: contempt for a (made-up) group of people
  threat         0.6 %: "I will find you and make you pay"

The labels are correlated as in the real data (severe_toxic implies toxic; insult and
obscene mostly come with toxic) and the rare ones are rare. Two things keep it from being
a lookup of words: clean comments sometimes talk about the words or quote a rude sentence
to report it ("Please do not call other editors idiots.", "Someone wrote 'You are a sad
clown.' on my talk page, please revert it.": 12 % of them), and annotators disagree: a toxic comment may carry an
insulting or obscene sentence without that label (15 %), and 0.3 % of clean comments are
labelled obscene or insult anyway. A reader of word order can tell the first apart; nothing
can learn the second.
"""
from __future__ import annotations

import csv
import random
from pathlib import Path

from . import check_split_size

__all__ = ["LABELS", "jigsaw"]

LABELS = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
P_TOXIC = 0.10
P_GIVEN_TOXIC = {"insult": 0.5, "obscene": 0.5, "severe_toxic": 0.1, "threat": 0.06, "identity_hate": 0.09}
P_META = 0.12     # a clean comment that mentions a rude word or quotes a rude sentence (a warning, a report)
P_UNLABELLED = 0.15  # a toxic comment's insulting/obscene sentence that its annotator did not label
P_NOISE = 0.003   # a clean comment labelled obscene or insult anyway

_TOPICS = ("history", "early life", "career", "geography", "economy", "reception", "plot", "discography",
           "etymology", "climate", "demographics", "legacy", "awards", "personal life", "references")
_NEUTRAL = (
    "Thanks for fixing the {t} section.", "I added a citation to the {t} section.",
    "Please see the talk page before reverting.", "The source you cited does not support this claim.",
    "I think the {t} paragraph needs a better reference.", "Could you explain why you removed my edit?",
    "This was discussed in the archive last year.", "Welcome to Wikipedia, and thanks for your contributions.",
    "I disagree with merging these two articles.", "The {t} section reads like an advert.",
    "Can someone check the dates in the {t} section?", "I have restored the previous version for now.",
    "Per the manual of style, headings should be in sentence case.", "The infobox image is not free to use.",
    "There is a newer source for the {t} figures.", "I moved the page back to its original title.",
    "Fair enough, I will leave it as it is.", "This article is within the scope of the project.",
    "Is there consensus for this change?", "I reverted the last edit because it removed sourced content.",
    "The {t} part could be shorter.", "Good catch, thank you.", "Please sign your posts with four tildes.",
    "I am not sure the {t} claims are notable.", "Let us wait for more opinions before we decide.",
)
_RUDE = (
    "Nobody cares about your edits.", "Shut up and go away.", "This is garbage and so are your sources.",
    "Get lost.", "Stop wasting everyone's time.", "Your edits are a joke.", "Go back to your cave.",
    "You clearly have no idea what you are doing.", "What a pathetic excuse for an article.",
)
_INSULT_ADJ = ("pathetic", "stupid", "clueless", "worthless", "sad", "ignorant", "brainless")
_INSULT_NOUN = ("idiot", "moron", "loser", "clown", "fool", "halfwit", "imbecile")
_INSULT = ("You are a {a} {n}.", "What a {a} {n} you are.", "Only an absolute {n} would write this.",
           "You {a} {n}.", "Are you really this much of a {n}?")
_OBSCENE_WORD = ("crap", "damn", "bloody", "freaking", "bullcrap", "sodding", "frigging")
_OBSCENE = ("This {w} article is a mess.", "Screw this {w} page.", "What the {w} hell is this.",
            "Take your {w} edits elsewhere.", "Such {w} nonsense.")
_GROUPS = ("northlanders", "marsh folk", "valley people", "islanders from Vell", "the Drovian clans")
_HATE = ("All {g} are vermin and should be banned.", "{G} like you ruin everything.",
         "Typical of {g}, they cannot think.", "Nobody wants {g} here.")
_THREAT = ("I will find you and make you pay.", "You better watch your back.", "Someone should hurt you for this.",
           "I know where you live.", "Keep this up and you will regret it, I promise.")
_QUOTE = ("Someone wrote '{s}' on my talk page, please revert it.", "An IP added '{s}' to the article; I removed it.",
          "Quoting the vandal: '{s}' That is not acceptable here.")
_META = ("Please do not call other editors {n}s.", "Calling people {n}s is a personal attack.",
         "Someone replaced the lead with the word {w}, I reverted it.", "The quote uses the word {w}, which is in the source.",
         "Saying {g} are vermin is exactly the kind of thing we remove.", "Writing that you will find someone is not acceptable.")


def _id(r: random.Random) -> str:
    return f"{r.getrandbits(64):016x}"


def _fill(r: random.Random, s: str) -> str:
    g = r.choice(_GROUPS)
    return s.format(t=r.choice(_TOPICS), a=r.choice(_INSULT_ADJ), n=r.choice(_INSULT_NOUN), w=r.choice(_OBSCENE_WORD),
                    g=g, G=g[:1].upper() + g[1:])


def comment(r: random.Random) -> tuple[str, dict[str, int]]:
    """One comment and its six labels."""
    y = dict.fromkeys(LABELS, 0)
    sents = [_fill(r, r.choice(_NEUTRAL)) for _ in range(r.randint(1, 4))]
    if r.random() < P_TOXIC:
        y["toxic"] = 1
        for k, p in P_GIVEN_TOXIC.items():
            y[k] = int(r.random() < p)
        bad = [r.choice(_RUDE)] if not (y["insult"] or y["obscene"]) or r.random() < 0.5 else []
        bad += [r.choice(_INSULT)] * y["insult"] + [r.choice(_OBSCENE)] * y["obscene"]
        bad += [r.choice(_THREAT)] * y["threat"] + [r.choice(_HATE)] * y["identity_hate"]
        if r.random() < P_UNLABELLED:  # the annotator left this one's label out
            bad.append(r.choice(_INSULT if not y["insult"] else _OBSCENE))
        bad = [_fill(r, s) for s in bad]
        if y["severe_toxic"]:  # more of it, louder
            bad += [_fill(r, r.choice(_INSULT + _OBSCENE)) for _ in range(r.randint(1, 2))]
            bad = [s.upper().rstrip(".") + "!!!" if r.random() < 0.6 else s for s in bad]
        if r.random() < 0.3:  # a short rant: less chatter (never the rant: a toxic comment keeps what made it so)
            del sents[r.randrange(len(sents))]
        for s in bad:
            sents.insert(r.randint(0, len(sents)), s)
    else:
        if r.random() < P_META:  # talk about rude words, or a rude sentence quoted to report it
            said = _fill(r, r.choice(_INSULT + _OBSCENE + _RUDE + _THREAT + _HATE))
            meta = r.choice(_QUOTE).format(s=said) if r.random() < 0.5 else _fill(r, r.choice(_META))
            sents.insert(r.randint(0, len(sents)), meta)
        if r.random() < P_NOISE:
            y[r.choice(("obscene", "insult"))] = 1
    sep = "\n\n" if r.random() < 0.15 else " "
    return sep.join(sents), y


def jigsaw(out: str | Path, size: int = 10000, seed: int = 0, test_frac: float = 0.25) -> dict:
    """Write ``out/train.csv`` (``size`` comments with their labels) and ``out/test.csv``
    (``round(size * test_frac)`` comments, ids and text only). Deterministic for a seed.
    Returns ``{"train": n, "test": n, "positives": {label: n in train}, "path": str(out)}``."""
    if not 0 <= test_frac <= 1:
        raise ValueError(f"test_frac must be in [0, 1], got {test_frac}")
    check_split_size(size, test_frac, "a comment in train.csv and one in test.csv", test_of_size=False)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    positives = dict.fromkeys(LABELS, 0)
    r = random.Random(f"jigsaw-{seed}-train")
    with open(out / "train.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, quoting=csv.QUOTE_MINIMAL)
        w.writerow(["id", "comment_text", *LABELS])
        for _ in range(size):
            text, y = comment(r)
            w.writerow([_id(r), text, *(y[k] for k in LABELS)])
            for k in LABELS:
                positives[k] += y[k]
    n_test = int(round(size * test_frac))
    r = random.Random(f"jigsaw-{seed}-test")
    with open(out / "test.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, quoting=csv.QUOTE_MINIMAL)
        w.writerow(["id", "comment_text"])
        for _ in range(n_test):
            w.writerow([_id(r), comment(r)[0]])
    return {"train": size, "test": n_test, "positives": positives, "path": str(out)}
