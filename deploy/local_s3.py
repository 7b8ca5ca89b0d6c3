"""The S3-compatible server that `strata up --s3` runs as part of the local stack.

MinIO's `minio` binary when it is on PATH (objects persist under
`<data dir>/s3`), otherwise `moto_server` from moto's server extra (objects
live in that process's memory and are gone at `strata down`; `up` says so).
The server listens on loopback only (port 9000, or a free one when that is
busy) with fixed local credentials, the bucket `strata` is created, and the
walservice and pageserver get `--remote-storage s3://strata/stack` plus the
standard boto3 settings in their environment (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION).

A data dir remembers which remote storage its walservice and pageserver state
refers to (`<data dir>/remote-storage.json`): starting it again against other
remote storage, or against a moto_server whose memory is gone, is refused with
what to do instead, rather than serving timelines whose objects are missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from strata.durable_file import write_durably
from strata.local_process import free_port

BUCKET = "strata"
REMOTE_URL = f"s3://{BUCKET}/stack"
DEFAULT_PORT = 9000
# Loopback-only development credentials (MinIO wants a secret of at least 8 characters).
ACCESS_KEY = "strata"
SECRET_KEY = "strata-local-only"
REGION = "us-east-1"
START_TIMEOUT_S = 60.0
MARKER_FILE = "remote-storage.json"
# boto3 settings from the user's shell that would override or confuse the ones given here.
_SHADOWING_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION")


@dataclass(frozen=True)
class S3Server:
    kind: str  # "minio" or "moto_server"
    argv: list[str]
    env: dict[str, str]
    port: int

    @property
    def persistent(self) -> bool:
        return self.kind == "minio"

    @property
    def note(self) -> str:
        if self.persistent:
            return f"MinIO, bucket {BUCKET}, objects persist in its data dir"
        return (
            f"moto_server, bucket {BUCKET}, IN MEMORY: its objects are lost at `strata down` "
            "(put MinIO's `minio` on PATH for a persistent local S3)"
        )


def boto3_env(endpoint: str) -> dict[str, str]:
    """The standard boto3 settings that point at the local S3 server."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": REGION,
    }


def child_env(endpoint: str) -> dict[str, str]:
    """This process's environment with the local S3 settings in place of any the shell had."""
    env = {k: v for k, v in os.environ.items() if k not in _SHADOWING_ENV}
    env.update(boto3_env(endpoint))
    return env


def server_kind() -> str:
    """"minio" when MinIO's binary is on PATH, else "moto_server" (or a SystemExit saying what to install)."""
    if shutil.which("minio"):
        return "minio"
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        raise SystemExit(
            "strata up --s3 needs an S3-compatible server: put MinIO's `minio` binary on PATH, or install moto's "
            "server extra (pip install 'moto[server]'; `pip install -e '.[dev]'` includes it)"
        )
    return "moto_server"


def choose_server(data_dir: Path, port: int) -> S3Server:
    if server_kind() == "minio":
        minio = shutil.which("minio") or "minio"
        console = free_port()
        return S3Server(
            "minio",
            [minio, "server", str(data_dir / "s3"), "--address", f"127.0.0.1:{port}", "--console-address", f"127.0.0.1:{console}"],
            {"MINIO_ROOT_USER": ACCESS_KEY, "MINIO_ROOT_PASSWORD": SECRET_KEY},
            port,
        )
    return S3Server("moto_server", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], {}, port)


def client(endpoint: str) -> BaseClient:
    config = Config(connect_timeout=2, read_timeout=5, retries={"total_max_attempts": 1})
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name=REGION, config=config
    )


def wait_and_create_bucket(proc: subprocess.Popen[bytes], endpoint: str, log_path: Path) -> None:
    """Returns once the server answers and the bucket exists (made now, or kept from before)."""
    s3 = client(endpoint)
    deadline = time.monotonic() + START_TIMEOUT_S
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
            raise SystemExit(f"the S3 server exited with code {proc.returncode} while starting; its log ends:\n{tail}")
        try:
            s3.create_bucket(Bucket=BUCKET)
            return
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return
            last = f"{code}: {exc}"
        except BotoCoreError as exc:  # not listening yet
            last = str(exc)
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the S3 server at {endpoint} did not accept CreateBucket within {START_TIMEOUT_S:.0f}s ({last}); see {log_path}")


def health(address: str) -> str:
    """SERVING when the server answers and holds the bucket."""
    try:
        client(f"http://{address}").head_bucket(Bucket=BUCKET)
        return "SERVING"
    except ClientError as exc:
        return f"no bucket {BUCKET} ({exc.response.get('Error', {}).get('Code', '?')})"
    except BotoCoreError as exc:
        return f"unreachable ({type(exc).__name__})"


def check_reuse(data_dir: Path, url: str, kind: str) -> None:
    """Refuse to start a data dir's state against remote storage that does not hold its objects."""
    has_state = (data_dir / "walservice").exists() or (data_dir / "pageserver").exists()
    marker = data_dir / MARKER_FILE
    before = json.loads(marker.read_text()) if marker.exists() else ({"url": "file://", "kind": "embedded"} if has_state else None)
    if has_state and before is not None:
        same = before["url"].split("://")[0] == url.split("://")[0] and before["kind"] == kind
        if not same or kind == "moto_server":
            gone = " (moto_server kept them in memory: they are gone)" if before["kind"] == "moto_server" else ""
            raise SystemExit(
                f"{data_dir} holds walservice and pageserver state whose remote objects live in {before['url']} "
                f"on {before['kind']}{gone}, so it cannot start against {url} on {kind}: use a fresh --data-dir, "
                f"or remove {data_dir / 'walservice'} and {data_dir / 'pageserver'} to start over"
            )
    write_durably(marker, json.dumps({"url": url, "kind": kind}).encode())
