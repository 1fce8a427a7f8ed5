"""Systems: where passes run. Each system is one module here that registers itself (``honed.systems.base``).

``local``: LocalSystem, this process; ``python_env``: PythonEnvironment, another interpreter; ``ray_system``:
Ray, tasks on a Ray cluster.  ``worker`` is the PythonEnvironment worker's entry point.
"""
