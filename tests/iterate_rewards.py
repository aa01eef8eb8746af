"""Toy rewards for the iterate tests, loaded as ``path/to/iterate_rewards.py:name`` or ``iterate_rewards:name``."""


def length(prompts, responses):
    return [float(len(r)) for r in responses]


def space_first(prompts, responses):
    # Depends on the first generated token only: a tiny model learns it in one round.
    return [1.0 if r.startswith(" ") else 0.0 for r in responses]


def constant(prompts, responses):
    return [1.0] * len(responses)


def crash(prompts, responses):
    return 1 / 0


NOT_A_FUNCTION = 3
