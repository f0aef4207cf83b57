"""Gradient estimators: which points to evaluate, and how their losses become coefficients.

An estimator plans the evaluation points of a step as combinations of seeded directions,
``{direction index: scale}`` meaning theta + sum scale * z_i, and turns the losses at those
points into coefficients g_i such that the estimate is g = sum_i g_i z_i. It never touches a
tensor: the optimizer moves the parameters and the projection says what z_i is.
"""

from .base import Estimator, Plan

__all__ = ["Estimator", "Plan"]
