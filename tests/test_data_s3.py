"""The real S3 protocol through s3fs, against a moto server on 127.0.0.1 started here.

HF_HUB_OFFLINE is set for the whole suite (conftest): URLs must load anyway, since hub offline
mode is about the hub, not the user's bucket.
"""

from __future__ import annotations

import json

import pytest

from honed.data import DataConfig, fingerprint, load_rows
from honed.errors import DataError

ROWS = [{"q": "is the kettle on", "a": "yes"}, {"q": "did it rain today", "a": "no"}]
BUCKET = "honed-data-test"


@pytest.fixture(autouse=True)
def _own_datasets_cache(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """datasets' arrow copies of the test files go to the test's folder, not ~/.cache."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")


@pytest.fixture(scope="module")
def s3_endpoint(s3: str) -> str:
    """The moto S3 server of conftest's ``s3`` fixture, with a bucket of this module's files."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3)
    client.create_bucket(Bucket=BUCKET)
    body = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
    client.put_object(Bucket=BUCKET, Key="rows.jsonl", Body=body)
    client.put_object(Bucket=BUCKET, Key="parts/one.jsonl", Body=body[: body.index(b"\n") + 1])
    client.put_object(Bucket=BUCKET, Key="parts/two.jsonl", Body=body[body.index(b"\n") + 1:])
    client.put_object(Bucket=BUCKET, Key="bad.jsonl", Body=b'{"q": "fine", "a": "x"}\n{"q": broken}\n')
    return s3


def cfg(url: str) -> DataConfig:
    return DataConfig.model_validate({"name": "s3", "load_dataset_config": {"data_files": url},
                                      "pre_process_data_config": {"text_template": "{q}? {a}"}})


@pytest.mark.parametrize("url", [f"s3://{BUCKET}/rows.jsonl", f"s3://{BUCKET}/parts/*.jsonl", f"s3://{BUCKET}/parts"])
def test_s3_sources(s3_endpoint: str, url: str, tmp_path) -> None:
    from honed.data.sources import load_rows as load

    assert load(cfg(url), cache_dir=tmp_path).to_list() == ROWS
    assert len(fingerprint(cfg(url))) == 64


@pytest.mark.parametrize(
    ("key", "pattern"),
    [("missing.jsonl", r"cannot read s3://honed-data-test/missing\.jsonl"),
     ("bad.jsonl", r"s3://honed-data-test/bad\.jsonl, line 2: malformed JSON")],
)
def test_s3_errors(s3_endpoint: str, key: str, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        load_rows(cfg(f"s3://{BUCKET}/{key}"))
