"""The world's pretraining corpus: what a base model would have read before any fine-tuning.

Llama 2's post-training starts from a pretrained model that already knows facts and skills;
SFT teaches it the format of an assistant, and RLHF elicits what it knows (the reward model,
initialised from the same backbone, can only rank what the backbone can tell apart). A tiny
model initialised at random knows nothing, so on held-out prompts neither SFT nor RLHF has
knowledge to draw out. This corpus stands in for the web text of pretraining:

- the world's facts, stated as text and never in the prompts' form: "7+5=12", "7 plus 5 is
  12", "The capital of Peru is Lima.", "Lima is the capital of Peru.", "plum is a fruit.";
- its skills, practised on made-up words disjoint from the world's (``tasks.WORDS``), so that
  no word-play prompt's answer is in the corpus: "vokafu backwards is ufakov.", "The first
  letter of vokafu is v.", "vokafu again: vokafu".

Held-out prompts stay held out in the sense that matters for alignment: no prompt, no
demonstration and no preference of any split is in the corpus. The facts behind them are,
as they are in a real model's pretraining data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from textrl.jsonl import write_jsonl_atomically
from textrl.world.tasks import ADDENDS, CAPITALS, CATEGORIES, FACTORS, WORDS, made_up_words

CORPUS_WORD_SEED = 99
"""Seed of the corpus's made-up words (the world's own come from another seed)."""
DOCUMENT_CHARACTERS = 200
"""Lines are joined into documents of at most this many characters (one JSONL record each)."""


def fact_lines() -> list[str]:
    """Every arithmetic, capital and category fact of the world, each in text form."""
    lines = []
    for a in ADDENDS:
        for b in ADDENDS:
            lines += [f"{a}+{b}={a + b}", f"{a} plus {b} is {a + b}"]
    for a in FACTORS:
        for b in FACTORS:
            lines += [f"{a}*{b}={a * b}", f"{a} times {b} is {a * b}"]
    for country, city in CAPITALS.items():
        lines += [f"The capital of {country} is {city}.", f"{city} is the capital of {country}."]
    for category, items in CATEGORIES.items():
        lines += [f"{item} is a {category}." for item in items]
    return lines


def skill_lines(words: int) -> list[str]:
    """Copying, reversing and first letters of ``words`` made-up words none of the world's
    prompts uses."""
    world_words = set(WORDS)
    candidates = made_up_words(len(WORDS) + 3 * words, seed=CORPUS_WORD_SEED)
    fresh = [word for word in candidates if word not in world_words][:words]
    if len(fresh) < words:
        raise ValueError(f"only {len(fresh)} made-up words are disjoint from the world's")
    lines = []
    for word in fresh:
        lines += [
            f"{word} backwards is {word[::-1]}.",
            f"The first letter of {word} is {word[0]}.",
            f"{word} again: {word}",
        ]
    return lines


def corpus_documents(words: int, seed: int) -> list[str]:
    """The corpus's lines, shuffled with ``seed`` and joined into documents."""
    lines = fact_lines() + skill_lines(words)
    order = np.random.default_rng(seed).permutation(len(lines))
    documents, current = [], ""
    for index in order:
        line = lines[index] + "\n"
        if current and len(current) + len(line) > DOCUMENT_CHARACTERS:
            documents.append(current)
            current = ""
        current += line
    return [*documents, current]


def write_corpus(path: Path, words: int, seed: int) -> int:
    """The corpus as JSONL text records (``textrl.sft_data``); returns the document count."""
    documents = corpus_documents(words, seed)
    write_jsonl_atomically(path, [{"text": document} for document in documents])
    return len(documents)
