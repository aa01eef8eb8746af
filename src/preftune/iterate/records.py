"""What ``preftune iterate`` reads and prints: prompt files in, the per-round table out (its JSON(L) files go
through :mod:`preftune.io`)."""

from __future__ import annotations

from typing import Any

from ..data.errors import DataError
from ..data.sources import read_source


def read_prompts(path: str, key: str, config_key: str) -> list[str]:
    """The prompt strings of a .jsonl/.json/.csv/.parquet file (or save_to_disk folder), in file order.

    A missing key, a non-string or an empty prompt stops the run naming the row: a prompt list is short enough
    to fix, and skipping rows would change which prompts a round trains on without anyone noticing.
    """
    try:
        rows = read_source(path, "train")
    except DataError as exc:
        raise DataError(f"{config_key}: {exc}") from None
    prompts = []
    for row in rows:
        if key not in row.data:
            keys = ", ".join(repr(k) for k in row.data) or "none"
            raise DataError(
                f"{row.where()}: missing key {key!r} (iterate.prompt_key); the row's keys are {keys}."
            )
        value = row.data[key]
        if not isinstance(value, str):
            raise DataError(f"{row.where()}: {key!r} must be a string, got {type(value).__name__}.")
        if not value.strip():
            raise DataError(f"{row.where()}: {key!r} is empty.")
        prompts.append(value)
    return prompts


def _fmt(value: float | None, width: int) -> str:
    return f"{value:{width}.4f}" if value is not None else f"{'-':>{width}}"


def round_table(summaries: list[dict[str, Any]]) -> str:
    """The per-round table printed after each round, e.g.::

    round  samples  reward mean  reward max  pairs  dropped  eval reward
        1       64       0.1250      0.9000     14        2       0.2000
    """
    lines = ["round  samples  reward mean  reward max  pairs  dropped  eval reward"]
    if summaries and "eval_reward_start" in summaries[0]:  # round 0: the starting model, evaluated only
        lines.append(
            f"{0:5d}  {'-':>7}  {'-':>11}  {'-':>10}  {'-':>5}  {'-':>7}  {_fmt(summaries[0]['eval_reward_start'], 11)}"
        )
    for s in summaries:
        dropped = sum(s["dropped"].values())
        lines.append(
            f"{s['round']:5d}  {s['samples']:7d}  {_fmt(s['reward_mean'], 11)}  {_fmt(s['reward_max'], 10)}  "
            f"{s['pairs']:5d}  {dropped:7d}  {_fmt(s.get('eval_reward_mean'), 11)}"
        )
    return "\n".join(lines)
