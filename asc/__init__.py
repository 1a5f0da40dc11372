"""asc: acoustic scene classification under device mismatch (DCASE2019 Task 1B).

A plain library: data layout, synthetic data, features, enhancement, models and training. It never
imports ray or mlflow; ``search`` builds the distributed search on top of it.
"""

from asc.errors import AscError

REFERENCE_DEVICE = "a"  # device A (Soundman OKM II + Zoom F8) is the reference in every DCASE set

SCENES = (
    "airport",
    "bus",
    "metro",
    "metro_station",
    "park",
    "public_square",
    "shopping_mall",
    "street_pedestrian",
    "street_traffic",
    "tram",
)

__all__ = ["AscError", "REFERENCE_DEVICE", "SCENES"]
