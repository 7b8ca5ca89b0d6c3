"""Remote storage, shared by the walservice (WAL offload), the pageserver
(layers, indexes, generations), gpu/ (vector index builds) and compute_shim
(vector search). Below every component; imports none of them.

| module | what it holds |
| --- | --- |
| `interface.py` | `RemoteStorage` (the interface every backend implements), `RemoteObject`, the errors, what every backend guarantees ("Consistency") |
| `verified.py` | verified downloads and uploads: `VerifyingStorage`, the checksum checks, crash-safe download into a file |
| `local_fs.py` | `LocalFsStorage`, the `file://DIR` backend (checksum sidecars, flock, hard links) |
| `s3.py` | `S3Storage`, the `s3://BUCKET/PREFIX` backend, and its `RetryPolicy` |
| `url.py` | `open_remote_storage(url)`: the backend a `--remote-storage` URL names |
| `layout.py` | the bucket layout: every key builder and parser, drawn as a table |
| `faults.py` | `FaultyStorage`: wraps any backend with injected errors, outages, latency and torn uploads (tests) |

Import from the modules themselves; this package's `__init__` imports nothing,
so importing one module (say the layout) does not pull in boto3.
"""
