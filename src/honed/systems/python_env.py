"""PythonEnvironment: run each pass in another interpreter (a venv with other library versions).

The pass, its config, the input handle and the context go to ``python -m honed.systems.worker`` as
JSON; the worker runs the pass there and answers with the output handle.  honed must be installed
in that environment too (``pip install honed`` there).

A managed environment (``managed_env: true``, Olive's ``olive_managed_env``) is a venv honed builds
itself under ``<cache_dir>/envs/<key>`` from a requirements file.  Like Olive's (``venv.create(...,
system_site_packages=True)`` in olive/systems/utils/misc.py) it sees the host's packages, here through
a ``.pth`` file that appends the host's site-packages after its own, so honed, torch and onnxruntime
need no reinstall while the versions the requirements install come first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal, cast

from filelock import FileLock
from pydantic import Field, StrictBool, field_validator

from honed.errors import UserError
from honed.systems.base import PassRequest, PassResponse, System, SystemConfig, register_system
from honed.systems.worker import USER_ERROR_PREFIX
from honed.util.accelerator import Accelerator
from honed.util.paths import LocalPath, resolve_local


def find_python(path: str) -> Path:
    """The interpreter in ``path`` (a venv folder, its bin/ folder, or the interpreter itself)."""
    p = Path(path).expanduser()
    for cand in (p, p / "python", p / "bin" / "python", p / "Scripts" / "python.exe"):
        if cand.is_file():
            return cand
    raise UserError(f"python_environment_path '{path}': no Python interpreter there; give a venv folder or its bin/")


ENV_FORMAT = "1"
"""Part of every managed environment's key: bump it when the way environments are built changes."""
COMPLETE = ".honed-env-complete"
"""Written last into a managed environment; a folder without it is unfinished and is built again."""

log = logging.getLogger("honed")


def requirement_lines(text: str) -> list[str]:
    """The lines of a requirements file pip would act on (no blanks, no ``#`` comments)."""
    return [ln for ln in (raw.split(" #")[0].strip() for raw in text.splitlines()) if ln and not ln.startswith("#")]


class ManagedEnv:
    """A venv under ``<cache_root>/envs/<key>`` built from a requirements file, made on first use.

    ``key`` hashes the requirements file's bytes, the host interpreter's version and path, and
    ``ENV_FORMAT``: a changed file (or host) is a new environment, and, through the system's
    identity, new pass cache keys.  The folder is built in place under a per-key file lock and
    counts as present only once ``COMPLETE`` is written, because a venv cannot be moved after it is
    built (pip writes absolute paths into the scripts it installs); a failed build is deleted.
    """

    def __init__(self, cache_root: Path, requirements_file: Path | None, label: str = "systems") -> None:
        self.requirements_file = requirements_file
        self.label = label
        try:
            raw = requirements_file.read_bytes() if requirements_file else b""
        except OSError as e:
            raise UserError(f"{label}.requirements_file: cannot read {requirements_file} ({e.strerror}); "
                            "fix the path") from e
        self.text = raw.decode("utf-8-sig", errors="replace")
        h = hashlib.sha256()
        for part in (ENV_FORMAT.encode(), sys.version.encode(), sys.executable.encode(), raw):
            h.update(part + b"\0")
        self.key = h.hexdigest()[:24]
        self.path = cache_root / "envs" / self.key
        self.python = self.path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
        self._lock = cache_root / "locks" / f"env-{self.key}.lock"

    @property
    def exists(self) -> bool:
        return (self.path / COMPLETE).is_file()

    def ensure(self) -> Path:
        """The environment's interpreter, building the environment first when it is missing.

        Raises UserError (one line) when ``venv`` or ``pip install`` fails; nothing is left behind then.
        """
        if self.exists:
            return self.python
        self._lock.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self._lock)):
            if self.exists:  # another run built it while we waited
                return self.python
            if self.path.exists():  # left unfinished by a run that died
                shutil.rmtree(self.path)
            log.info("%s: creating managed Python environment %s", self.label, self.path)
            try:
                self._build()
            except BaseException:
                shutil.rmtree(self.path, ignore_errors=True)
                raise
        return self.python

    def _build(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _run([sys.executable, "-m", "venv", str(self.path)], f"{self.label}: python -m venv {self.path}")
        sp = subprocess.run(
            [str(self.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        # Lines starting with "import" in a .pth run at startup; addsitedir (unlike a plain path line)
        # also reads the host's own .pth files, which is how an editable install of honed is found.
        host = [p for p in site.getsitepackages() if Path(p).is_dir()]
        code = "; ".join(f"site.addsitedir({p!r})" for p in host)
        (Path(sp) / "_honed_host_site.pth").write_text(f"import site; {code}\n" if code else "")
        if requirement_lines(self.text):
            _run([str(self.python), "-m", "pip", "install", "--disable-pip-version-check", "-r",
                  str(self.requirements_file)],
                 f"{self.label}.requirements_file: pip install -r {self.requirements_file}")
        (self.path / COMPLETE).write_text(json.dumps({"requirements_file": str(self.requirements_file or ""),
                                                      "host_python": sys.executable}))


def _run(cmd: list[str], what: str) -> None:
    """Run a build step; on failure a one-line UserError with the step's last error line."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode == 0:
        return
    lines = [ln.strip() for ln in (proc.stderr + "\n" + proc.stdout).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR:")]
    last = (errors or lines or [f"exit status {proc.returncode}"])[-1]
    raise UserError(f"{what} failed: {last}; fix the requirements (or install them) and run again")


class PythonEnvironmentConfig(SystemConfig):
    """Another Python interpreter on this machine: a venv you give, or one honed builds (managed_env)."""

    type: Literal["PythonEnvironment"] = Field(
        "PythonEnvironment", description="Runs each pass in a subprocess of another interpreter."
    )
    python_environment_path: LocalPath | None = Field(
        None, description="The folder holding the interpreter (a venv's bin/)."
    )
    managed_env: StrictBool = Field(
        False, description="Instead of python_environment_path: honed builds a virtual environment under "
        "<cache_dir>/envs/ from requirements_file (host packages stay importable; the requirements' versions come "
        "first) and reuses it while the file is unchanged (Olive's olive_managed_env)."
    )
    requirements_file: LocalPath | None = Field(
        None, description="With managed_env: a pip requirements file installed into the managed environment "
        "(relative: the working directory, else beside the config). Its content is part of every pass's cache key."
    )

    @field_validator("managed_env")
    @classmethod
    def _managed_python_env(cls, v: bool, info: Any) -> bool:  # info: pydantic.ValidationInfo
        if v and info.data.get("python_environment_path"):
            raise ValueError("managed_env and python_environment_path exclude each other; keep one")
        return v

    @field_validator("requirements_file")
    @classmethod
    def _requirements_need_managed(cls, v: str | None, info: Any) -> str | None:  # pydantic.ValidationInfo
        if v is not None and info.data.get("managed_env") is False:  # absent: managed_env itself is wrong
            raise ValueError("only read with managed_env: true; set it or remove requirements_file")
        return v


class PythonEnvironmentSystem(System):
    """Runs each pass in a subprocess of another interpreter (with ``managed_env``: a managed one, built on
    the first pass that runs, so a dry run or an all-cached run never builds it)."""

    name = "PythonEnvironment"
    description = "another interpreter on this machine (a venv you give, or one built from requirements_file)"
    config_class = PythonEnvironmentConfig

    def __init__(self, config: SystemConfig, accelerator: Accelerator, *, cache_root: Path,
                 config_dir: Path | None = None, label: str = "systems", dry_run: bool = False) -> None:
        super().__init__(config, accelerator, cache_root=cache_root, config_dir=config_dir, label=label,
                         dry_run=dry_run)
        cfg = cast(PythonEnvironmentConfig, config)
        self.env: ManagedEnv | None = None
        self._python: Path | None = None
        if cfg.managed_env:
            req = resolve_local(cfg.requirements_file, config_dir) if cfg.requirements_file else None
            if cfg.requirements_file and req is None:
                raise UserError(f"{label}.requirements_file: file not found: '{cfg.requirements_file}'; fix the path")
            self.env = ManagedEnv(cache_root, req, label)  # built by the first pass that runs, never in a dry run
            if dry_run and not self.env.exists:
                log.info("%s: a run creates the managed Python environment %s", label, self.env.path)
            self.identity = f"python-env:{self.env.key}"
        else:
            if not cfg.python_environment_path:
                raise UserError(f"{label}.python_environment_path: required for a PythonEnvironment; "
                                "give the venv folder (or set managed_env: true with a requirements_file)")
            self._python = find_python(cfg.python_environment_path)
            self.identity = f"python:{self._python}"
        self._versions: dict[tuple[str, ...], dict[str, str]] = {}

    def environment(self, distributions: tuple[str, ...]) -> dict[str, str]:
        """Python's and the distributions' versions in this system's interpreter, which runs the passes: a
        torch upgraded there changes the pass keys. A managed environment is named by the key of the
        requirements honed builds it from (the same before and after it is built, and no build for a dry run)."""
        if self.env is not None:
            return {"requirements": self.env.key}
        wanted = tuple(sorted(set(distributions)))
        if wanted not in self._versions:
            code = ("import importlib.metadata as m, json, platform, sys\nout = {'python': platform.python_version()}\n"
                    "for d in sys.argv[1:]:\n    try:\n        out[d] = m.version(d)\n"
                    "    except m.PackageNotFoundError:\n        out[d] = 'absent'\nprint(json.dumps(out))")
            proc = subprocess.run([str(self.python), "-c", code, *wanted], capture_output=True, text=True,
                                  timeout=120)
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
                raise UserError(f"the interpreter {self.python} could not report its library versions: {tail[0]}")
            self._versions[wanted] = json.loads(proc.stdout.strip().splitlines()[-1])
        return self._versions[wanted]

    @property
    def python(self) -> Path:
        if self._python is None and self.env is not None:
            self._python = self.env.ensure()
        return cast(Path, self._python)

    def run_pass(self, request: PassRequest) -> PassResponse:
        """Send the request to ``python -m honed.systems.worker`` in the other interpreter as a JSON file."""
        folder = Path(request.output_dir).parent
        req, resp = folder / "request.json", folder / "response.json"
        req.write_text(json.dumps(request.to_json()))
        proc = subprocess.run([str(self.python), "-m", "honed.systems.worker", str(req), str(resp)],
                              capture_output=True, text=True)
        if proc.returncode != 0 or not resp.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            if proc.returncode == 2 and tail[0].startswith(USER_ERROR_PREFIX):
                raise UserError(tail[0].removeprefix(USER_ERROR_PREFIX))
            raise RuntimeError(f"worker in {self.python} exited {proc.returncode}: {tail[0]}")
        answer = PassResponse.from_json(json.loads(resp.read_text()))
        answer.python = answer.python or str(self.python)  # older workers do not say: the one started
        return answer


register_system(PythonEnvironmentSystem)
