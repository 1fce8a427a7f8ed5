"""Systems: where passes run. ``LocalSystem`` runs them in this process."""

from honed.systems.local import LocalSystem, device_problem
from honed.util.accelerator import Accelerator

__all__ = ["Accelerator", "LocalSystem", "device_problem"]
