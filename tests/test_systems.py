"""The systems registry as the config sees it: --ray-address over a file's Ray system, messages for typos in a
system's nested keys, and a shared cache that cannot be reached."""

from __future__ import annotations

from pathlib import Path

import pytest

from honed.config.load import on_ray, validate
from honed.engine.shared_cache import SharedCache
from honed.errors import ConfigError, UserError


def _wf(model: Path, system: dict) -> dict:
    return {"input_model": {"model_path": str(model)}, "systems": {"cluster": system},
            "passes": {"cast": {"type": "CastDtype", "dtype": "bfloat16"}}, "engine": {"host": "cluster"}}


def test_ray_address_replaces_only_the_address_of_the_files_ray_system(tiny_llama: Path) -> None:
    system = {"type": "Ray", "address": "auto", "resources": {"num_cpus": 2, "num_gpus": 1}, "max_retries": 3,
              "runtime_env": {"env_vars": {"HONED_NODE_CACHE_DIR": "/scratch/honed"}}}
    wf = on_ray(validate(_wf(tiny_llama, system)), "head:6379")
    ray = wf.config.systems[wf.engine.host]
    assert wf.engine.host == "cluster" and ray.address == "head:6379"
    assert ray.resources.num_cpus == 2 and ray.resources.num_gpus == 1 and ray.max_retries == 3
    assert ray.runtime_env == system["runtime_env"] and wf.host_label == "--ray-address"


def test_ray_address_over_another_host_keeps_its_accelerators_as_target(tiny_llama: Path) -> None:
    wf = on_ray(validate(_wf(tiny_llama, {"type": "LocalSystem", "accelerators": [{"device": "gpu"}]})), "auto")
    assert wf.engine.host == "ray" and wf.engine.target == "cluster"
    assert wf.config.systems["ray"].type == "Ray" and wf.config.systems["ray"].accelerators[0].device == "gpu"


@pytest.mark.parametrize(("system", "line"), [
    ({"type": "Ray", "resources": {"num_cpu": 2}}, "systems.cluster.resources.num_cpu: unknown key; did you mean "
     "'num_cpus'?"),
    ({"type": "Ray", "adress": "auto"}, "systems.cluster.adress: unknown key; did you mean 'address'?"),
    ({"type": "Kubernetes"}, "systems.cluster.type: unknown system type 'Kubernetes'"),
])
def test_system_key_errors_name_the_right_keys(tiny_llama: Path, system: dict, line: str) -> None:
    with pytest.raises(ConfigError) as e:
        validate(_wf(tiny_llama, system))
    assert line in str(e.value)


def test_an_unreachable_shared_cache_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(UserError) as e:
        SharedCache("s3://bucket-nobody-has/prefix", storage_options={"skip_instance_cache": True})
    assert "\n" not in str(e.value) and str(e.value).startswith("engine.shared_cache: cannot use 's3://bucket")
