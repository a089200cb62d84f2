"""The sweep: qbench's main job (``python -m qbench sweep --bits 2,4,8``)."""

from qbench.sweep.config import SweepConfig
from qbench.sweep.plan import Point, plan_points

__all__ = ["Point", "SweepConfig", "plan_points"]
