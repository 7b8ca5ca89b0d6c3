"""pageserver/generation.py: generations are create-only records; of racing claims exactly one wins."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from pageserver.generation import (
    GenerationRecord,
    GenerationTaken,
    claim_generation,
    claim_next,
    list_generations,
    read_generation,
)
from strata.errors import CorruptionError
from strata.remote_storage.interface import RemoteStorage
from strata.remote_storage.layout import generation_key
from strata.remote_storage.local_fs import LocalFsStorage
from strata.remote_storage.s3 import S3Storage

TENANT = "ab" * 16


@pytest.fixture(params=["file", "s3-moto"])
def storage(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RemoteStorage]:
    if request.param == "file":
        yield LocalFsStorage(tmp_path / "remote")
        return
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        bucket = f"gen-{uuid.uuid4().hex[:12]}"
        boto3.client("s3").create_bucket(Bucket=bucket)
        yield S3Storage(bucket, "p")


def test_claims_are_ordered_and_create_only(storage: RemoteStorage) -> None:
    assert read_generation(storage, TENANT) == 0
    assert claim_next(storage, TENANT).generation == 1
    assert claim_next(storage, TENANT, at_least=4).generation == 5
    assert list_generations(storage, TENANT) == [1, 5]
    assert read_generation(storage, TENANT) == 5
    with pytest.raises(GenerationTaken, match="generation=5 was claimed by another pageserver"):
        claim_generation(storage, TENANT, 5)


def test_of_racing_claims_exactly_one_wins(storage: RemoteStorage) -> None:
    claim_next(storage, TENANT)
    barrier = threading.Barrier(8)
    outcomes: list[str] = []
    lock = threading.Lock()

    def claim() -> None:
        barrier.wait()
        try:
            record = claim_generation(storage, TENANT, 2)
            result = f"won:{record.attach_id}"
        except GenerationTaken:
            result = "lost"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [o for o in outcomes if o.startswith("won:")]
    assert len(winners) == 1 and outcomes.count("lost") == 7, outcomes
    stored = GenerationRecord.decode(storage.download_bytes(generation_key(TENANT, 2)), "gen 2")
    assert f"won:{stored.attach_id}" == winners[0], "the stored record is not the winner's"


def test_a_record_that_disagrees_with_its_name_is_corruption(storage: RemoteStorage) -> None:
    record = GenerationRecord(3, TENANT, 1, "00" * 16)
    storage.upload_bytes(record.encode(), generation_key(TENANT, 7))
    with pytest.raises(CorruptionError, match="not its own name"):
        read_generation(storage, TENANT)
