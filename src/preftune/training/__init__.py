"""Training: the trainer (:mod:`.trainer`, a loop over a callable step), the builder that makes one from a config
(:mod:`.builder`, :mod:`.loaders`), the entry points (:mod:`.runner`), and what a run writes and obeys along the
way: optimizer and schedule, checkpoints, metrics, signals."""
