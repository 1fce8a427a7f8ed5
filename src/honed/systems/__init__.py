"""Systems: where passes run. ``LocalSystem`` runs them in this process."""

from honed.systems.accelerator import Accelerator
from honed.systems.local import LocalSystem, device_problem

__all__ = ["Accelerator", "LocalSystem", "device_problem"]
