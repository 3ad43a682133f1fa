"""Sample data for translation (lesson 11) in the giga-fren layout: real French and English
sentences about numbers, the numbers spelled out in words by num2words.

``giga_fren(out)`` writes, like the corpus of the lesson, two files aligned by line number:

    out/giga-fren.release2.fixed.en     one English sentence a line
    out/giga-fren.release2.fixed.fr     its French translation on the same line

and a held-out pair beside them, ``out/valid.en`` and ``out/valid.fr``, in the same format.
The split is by number: a random tenth of the numbers (``valid_frac``) is kept for the
held-out pair, so no validation number occurs in training; a model must translate the
French number words compositionally ("soixante-treize" is 60 + 13 -> "seventy-three").

Most lines are "Wh" questions that lesson 11's filter keeps ("Where are the seventy-three
cats?" / "Où sont les soixante-treize chats ?"); the rest are statements and "How"
questions that it drops, so the filter has something to do. Nouns are masculine so that
"vingt et un" agrees. Deterministic for a seed.
"""
from __future__ import annotations

import random
from pathlib import Path

GIGA_FREN_STEM = "giga-fren.release2.fixed"
VALID_STEM = "valid"

# (English, French): kept by lesson 11's question filter
QUESTIONS = (
    ("Where are the {en} cats?", "Où sont les {fr} chats ?"),
    ("What are the {en} books on the table?", "Quels sont les {fr} livres sur la table ?"),
    ("Who bought {en} tickets?", "Qui a acheté {fr} billets ?"),
    ("Why do you need {en} pens?", "Pourquoi avez-vous besoin de {fr} stylos ?"),
    ("When will the {en} trains arrive?", "Quand les {fr} trains arriveront-ils ?"),
    ("Which of the {en} dogs is yours?", "Lequel des {fr} chiens est le vôtre ?"),
    ("What is the number {en}?", "Quel est le nombre {fr} ?"),
    ("Whose are these {en} euros?", "À qui sont ces {fr} euros ?"),
)
# dropped by the filter: statements, and questions that do not start with "Wh"
OTHERS = (
    ("I have {en} cats.", "J'ai {fr} chats."),
    ("There are {en} books on the table.", "Il y a {fr} livres sur la table."),
    ("How do you write {en} in French?", "Comment écrit-on {fr} en français ?"),
    ("We sold {en} tickets yesterday.", "Nous avons vendu {fr} billets hier."),
)


def number_words(n: int) -> tuple[str, str]:
    """(English, French) words for n, as num2words writes them."""
    from num2words import num2words

    return num2words(n, lang="en"), num2words(n, lang="fr")


def giga_fren(out: str | Path, size: int = 3000, seed: int = 0, low: int = 2, high: int = 999,
              valid_frac: float = 0.1, question_frac: float = 0.8) -> dict:
    """Write ``size`` sentence pairs in the giga-fren layout (see the module docstring):
    numbers from low to high (>= 2: the nouns are plural), a ``valid_frac`` of the numbers
    held out, each pair a question kept by lesson 11's filter with probability
    ``question_frac``. Existing files of the same names are overwritten.

    Returns ``{"train": pairs, "valid": pairs, "questions": {"train", "valid"}, "numbers":
    {"train", "valid"}, "path"}``."""
    if size < 2:
        raise ValueError(f"size must be >= 2 (a training and a validation pair), got {size}")
    if not 2 <= low < high:
        raise ValueError(f"need 2 <= low < high, got low={low}, high={high}")
    if not 0.0 < valid_frac < 1.0 or not 0.0 <= question_frac <= 1.0:
        raise ValueError(f"need 0 < valid_frac < 1 and 0 <= question_frac <= 1 (got {valid_frac}, {question_frac})")
    r = random.Random(f"giga-fren-{seed}")
    numbers = list(range(low, high + 1))
    r.shuffle(numbers)
    n_valid_numbers = max(1, round(len(numbers) * valid_frac))
    split_numbers = {"valid": sorted(numbers[:n_valid_numbers]), "train": sorted(numbers[n_valid_numbers:])}
    n_valid = max(1, round(size * valid_frac))
    counts = {"train": size - n_valid, "valid": n_valid}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    questions = {}
    for split, stem in (("train", GIGA_FREN_STEM), ("valid", VALID_STEM)):
        en, fr, q = [], [], 0
        for _ in range(counts[split]):
            n = r.choice(split_numbers[split])
            is_q = r.random() < question_frac
            t_en, t_fr = r.choice(QUESTIONS if is_q else OTHERS)
            w_en, w_fr = number_words(n)
            en.append(t_en.format(en=w_en))
            fr.append(t_fr.format(fr=w_fr))
            q += is_q
        (out / f"{stem}.en").write_text("\n".join(en) + "\n", encoding="utf-8")
        (out / f"{stem}.fr").write_text("\n".join(fr) + "\n", encoding="utf-8")
        questions[split] = q
    return {**counts, "questions": questions,
            "numbers": {k: len(v) for k, v in split_numbers.items()}, "path": str(out)}


__all__ = ["giga_fren", "number_words", "GIGA_FREN_STEM", "VALID_STEM", "QUESTIONS", "OTHERS"]
