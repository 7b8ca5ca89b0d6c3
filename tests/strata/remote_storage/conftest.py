"""The shared fixtures (harness.py) for every test of strata/remote_storage."""

from tests.strata.remote_storage.harness import (  # noqa: F401 - fixtures
    aws_env,
    fake_time,
    moto_server,
    retry_log,
    s3_storage,
    server_storage,
    storage,
)
