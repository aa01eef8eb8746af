"""Where reference log-probs come from.

- :mod:`.plan`: the :class:`ReferencePlan`, decided once from the config (:func:`plan_reference`).
- :mod:`.sources`: the :class:`~.sources.ReferenceSource` seam and the live sources (a frozen model, the policy
  with its adapters disabled).
- :mod:`.cache` and :mod:`.precompute`: the on-disk table of precomputed log-probs and the pass that fills it.
- :mod:`.build`: :func:`~.build.build_reference`, a plan to a source.

Only the plan is imported here: the config's validation reads it, and the rest needs the model side.
"""

from .plan import ReferencePlan, plan_reference

__all__ = ["ReferencePlan", "plan_reference"]
