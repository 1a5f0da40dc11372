"""search: the distributed hyperparameter search over the asc library (Ray Tune, Optuna, MLflow).

``asc`` never imports this package; this package launches ``asc``.
"""

import os as _os

# MLflow draws a progress bar for every artifact it moves (a trial's model, a fusion's members): on a
# search's console that is a line per trial of noise around the tables. Our own bars say what runs.
_os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# Against a tracking server MLflow prints "View run ... at: URL" and "View experiment at: URL" to stdout
# whenever a run ends: two lines per trial between the search's own. The search prints where to look.
_os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
# MLflow retries an unanswered request 7 times with doubling waits (minutes); the search's own
# RetryingClient (search.tracking) retries and keeps writes instead, so MLflow's own retries are few.
_os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
# Tune warns when a callback or its result processing takes over 0.5 s ("may be a performance
# bottleneck"): our MLflow callback writes a SQLite store once per trial-epoch, which on a busy 2-core
# machine takes about that, against epochs of many seconds. Read when ray.tune is first imported.
_os.environ.setdefault("TUNE_WARN_THRESHOLD_S", "5")

import logging as _logging

# MLflow logs at INFO that it creates (and migrates) a new SQLite store's tables: on stderr, where a
# user reads errors, at the start of every first search. The store's path is in the summary anyway.
_logging.getLogger("mlflow.store.db.utils").setLevel(_logging.WARNING)
_logging.getLogger("alembic.runtime.migration").setLevel(_logging.WARNING)
