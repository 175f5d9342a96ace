"""The exact rank kernels of the map and the dynamic read-out, one job per module.

- :mod:`.layout`: (source, target) pairs arranged once per map (:class:`PairLayout`).
- :mod:`.factored`: a read-out kept factored, B = W @ U with the vocabulary-sized U shared
  (:class:`Factored`, leading head dimensions allowed; :class:`SharedU`).
- :mod:`.bounds`: how far two computations of one logit can differ (the rounding margin).
- :mod:`.candidates`: the columns most likely to be extreme in a head's rows.
- :mod:`.pairs`: the map's pruned kernel (:func:`pair_ranks`).
- :mod:`.batched`: the dynamic read-out's kernel (:func:`batched_ranks`), heads batched.
"""
