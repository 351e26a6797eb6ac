"""Loss-landscape slices around a trained point: random (filter-normalized), trajectory-PCA and
checkpoint-interpolation directions, evaluated in batches and exactly.

    from genbound.diagnostics.landscape import random_plane, coordinates
    coords = coordinates(model, names)          # the perturbed space: name -> tensor (the centre)
    result = random_plane(model, coords, evalset, grid=21, span=1.0, seed=0, device="cpu")
    result.loss[10, 10] == result.reference_loss  # the centre is a grid point

Modules: :mod:`.directions` (spaces and directions), :mod:`.grid` (grids and the batched evaluator),
:mod:`.summaries` (curvature, sharpness, basin), :mod:`.api` (the functions below).
"""

from .api import (
    DIRECTION_KINDS,
    Landscape,
    interpolate,
    landscape,
    landscape_from_checkpoints,
    model_with,
    pca_plane,
    random_line,
    random_plane,
)
from .directions import (
    NORMALIZATIONS,
    SPACES,
    Direction,
    DirectionInfo,
    checkpoint_space,
    coordinates,
    cosine,
    difference_direction,
    filter_norm_error,
    pca_directions,
    random_directions,
)
from .grid import GridEvaluator, PointValues, evaluate_points, grid_axis, grid_points
from .summaries import Summary, summarize

__all__ = [
    "DIRECTION_KINDS", "NORMALIZATIONS", "SPACES", "Direction", "DirectionInfo", "GridEvaluator", "Landscape",
    "PointValues", "Summary", "checkpoint_space", "coordinates", "cosine", "difference_direction",
    "evaluate_points", "filter_norm_error", "grid_axis", "grid_points", "interpolate", "landscape",
    "landscape_from_checkpoints", "model_with", "pca_directions", "pca_plane", "random_directions", "random_line",
    "random_plane", "summarize",
]
