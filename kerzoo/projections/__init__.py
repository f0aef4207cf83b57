"""Projections: what the direction z_i of a tensor is (dense Gaussian, a random subspace...)."""

from .base import ParamInfo, Projection

__all__ = ["ParamInfo", "Projection"]
