"""Iterative DPO (``preftune iterate``): sample from the policy, score with a reward, pair best with worst,
train DPO on the pairs, repeat. Entry point :func:`run_iterate`; rewards in :mod:`.reward`, pairing in
:mod:`.pairs`.
"""

from .pairs import Pair, PromptSamples, build_pairs
from .reward import RewardFn, load_reward
from .rounds import run_iterate

__all__ = ["Pair", "PromptSamples", "RewardFn", "build_pairs", "load_reward", "run_iterate"]
