"""Update rules: turn the estimate g = sum_i g_i z_i into a change of the parameters."""

from .base import Update, UpdateContext

__all__ = ["Update", "UpdateContext"]
