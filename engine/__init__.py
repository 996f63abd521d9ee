"""Pure science for matforge: featurize, generate, surrogate, acquire, anomaly, store.

Nothing in this package imports Prefect; the flows in ``matforge.flows`` wrap it.
"""
