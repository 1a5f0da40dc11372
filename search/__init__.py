"""search: the distributed hyperparameter search over the asc library (Ray Tune, Optuna, MLflow).

``asc`` never imports this package; this package launches ``asc``.
"""
