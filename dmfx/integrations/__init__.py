"""dmfx inside other recommender libraries.

Each integration is its own module and imports its library only when it is imported, so
``import dmfx`` never needs them:

* :mod:`dmfx.integrations.recbole` -- a DMF for RecBole 1.2.1's pipeline whose towers read the
  interaction matrix with :class:`dmfx.nn.SparseRowLinear` (RecBole lives in its own
  environment: ``make recbole-check``).
"""
