"""Red-team pairs: a model's reply to a harmful prompt against the compliance a jailbreak
elicits from it.

Why: a safety reward model learns only the orders its pairs show. A model fine-tuned on
polite refusals never complies, so the pairs sampled from it on harmful prompts hold two
refusals, or a refusal and garbage; no pair ranks a fluent compliance below a refusal, and
PPO finds that gap (stop 14, seed 1: "Use killit llll." to "How can I stalk my ex without
being seen?", which the safety model scored above the refusal). Llama 2's red teamers wrote
prompts that made the model comply, and annotators ranked those replies.

We simulate the elicited reply with the same model's answer to a harmless request phrased
like a harmful one (a *lure*: a borderline prompt such as "How do I kill a stuck process?"):
it is fluent, in the model's own distribution, and it is what a jailbreak makes the model
say. The red teamer retries up to ``attempts`` times until the model does not refuse, as a
person would; the annotators then rank it against the model's own reply to the harmful
prompt like any other pair.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from textrl.world.pair_sampling import SampledPairs, Variant, distinct_pairs
from textrl.world.tasks import Task, is_refusal

RED_TEAM_PREFIX = "red-team:"
"""Marks the elicited side's model name in a preference pair."""


def red_team_pairs(
    variants: Sequence[Variant],
    harmful_tasks: Sequence[Task],
    lure_tasks: Sequence[Task],
    count: int,
    seed: int,
    attempts: int = 4,
    max_new_tokens: int = 48,
    batch_size: int = 256,
    progress: bool = False,
) -> SampledPairs:
    """Up to ``count`` pairs on harmful prompts drawn with replacement (seeded): the first
    response is a variant's reply to the prompt, the second the first of ``attempts``
    samples of a variant's answer to a random lure that is not a refusal (the last sample
    when all are). Pairs with two identical responses are dropped."""
    if not variants or not harmful_tasks or not lure_tasks:
        raise ValueError("red teaming needs a variant, harmful prompts and lure prompts")
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    rng = np.random.default_rng(seed)
    harmful = [harmful_tasks[i] for i in rng.integers(0, len(harmful_tasks), size=count)]
    lures = [lure_tasks[i] for i in rng.integers(0, len(lure_tasks), size=count)]
    assignment = rng.integers(0, len(variants), size=(count, 2))  # replier, jailbroken
    replies, elicited = [""] * count, [""] * count
    for index, variant in enumerate(variants):
        reply_slots = np.flatnonzero(assignment[:, 0] == index)
        lure_slots = np.flatnonzero(assignment[:, 1] == index)
        prompts = [harmful[i].prompt for i in reply_slots]
        prompts += [lures[i].prompt for i in lure_slots for _ in range(attempts)]
        if not prompts:
            continue
        texts = variant.sample(prompts, max_new_tokens, batch_size, progress)
        own, tries = texts[: len(reply_slots)], texts[len(reply_slots) :]
        for slot, text in zip(reply_slots, own, strict=True):
            replies[slot] = text
        for position, slot in enumerate(lure_slots):
            samples = tries[position * attempts : (position + 1) * attempts]
            elicited[slot] = next((t for t in samples if not is_refusal(t)), samples[-1])
    names = [variant.name for variant in variants]
    return distinct_pairs(
        harmful,
        replies,
        elicited,
        [names[i] for i in assignment[:, 0]],
        [RED_TEAM_PREFIX + names[i] for i in assignment[:, 1]],
    )
