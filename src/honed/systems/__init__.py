"""Systems: where passes run. Each system is one module here, registered with ``register_system``.

``LocalSystem`` runs passes in this process, ``PythonEnvironment`` in another interpreter, ``Ray`` as tasks
on a Ray cluster (see ``honed.systems.base`` for the contract).
"""

from honed.systems import local, python_env, ray_system  # noqa: F401  (each registers its system)
from honed.systems.base import PassRequest, PassResponse, System, SystemConfig, all_systems, get_system
from honed.systems.local import LocalSystem, device_problem
from honed.util.accelerator import Accelerator

__all__ = ["Accelerator", "LocalSystem", "PassRequest", "PassResponse", "System", "SystemConfig", "all_systems",
           "device_problem", "get_system"]
