"""The learned pruning methods, one file each, registered by name (`--method NAME`) in the same
registry as the criteria (`prune/methods/base.py`'s `METHODS`).

They sit above the cutting core (`prune/`): they train (`recovery/trainer.py`) and price what they
learn (`search/cost_model.py`) before the core scores and cuts, which only ever sees their scores.
`gating.py` (gates at a group's hook points), `l0.py` (hard-concrete gates) and `factorized.py`
(FLOP's low-rank Linear pairs) are theirs alone.
"""

from edgeprune.pipeline.learned import anp, flop, pfs, sanp, slimming, tas  # noqa: F401  (registration)
