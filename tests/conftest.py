"""Session-wide fixtures: tiny models are built once and shared read-only."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

torch.set_num_threads(1)

from tests.helpers import S3_BUCKET  # noqa: E402
from tests.tiny_models import build_bert_classifier, build_causal_lm  # noqa: E402


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_causal_lm(tmp_path_factory.mktemp("tiny") / "llama", "llama")


@pytest.fixture(scope="session")
def bf16_llama(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama stored in bf16 (as a merged fine-tune of a big model is)."""
    import shutil

    from honed.models.handle import ModelHandle
    from honed.models.loaders import load_model

    out = tmp_path_factory.mktemp("bf16") / "llama"
    shutil.copytree(tiny_llama, out)
    load_model(ModelHandle(kind="hf", path=str(tiny_llama)), dtype="bfloat16").save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_phi3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_causal_lm(tmp_path_factory.mktemp("tiny") / "phi3", "phi3")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bert_classifier(tmp_path_factory.mktemp("tiny") / "bert")


@pytest.fixture(scope="session")
def genai_fp32(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory):
    """tiny_llama built by ModelBuilder at fp32 (an onnxruntime-genai folder), once per session."""
    from tests.helpers import run_pass

    return run_pass("ModelBuilder", tiny_llama, tmp_path_factory.mktemp("genai"), precision="fp32")


@pytest.fixture(params=["llama", "phi3"])
def tiny_causal_lm(request: pytest.FixtureRequest) -> Path:
    """Each test using this runs once per architecture."""
    return request.getfixturevalue(f"tiny_{request.param}")


@pytest.fixture(scope="session")
def s3() -> Iterator[str]:
    """A moto S3 server with an empty bucket; the AWS_* variables point every client (and subprocess) at it.

    One per session: fsspec keeps one S3 filesystem per set of arguments, with the endpoint it saw first, so a
    second server on another port would be unreachable through it."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}.items():
            mp.setenv(k, v)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=S3_BUCKET)
        try:
            yield endpoint
        finally:
            server.stop()
