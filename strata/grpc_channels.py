"""Options for the gRPC channels Strata's processes open to each other.

Every dialing side uses them: a compute's `Client` and `WalWriter`, the pageserver's
connections to the walservice nodes, and a walservice node's connections to its
peers. Besides the message size limit, they cap gRPC's reconnect backoff at
0.5 s. By default gRPC waits 1 s after a failed connect and 1.6x longer after
each further one, up to 120 s. A node that restarted then stayed unreachable for
seconds after it was back: 2.6 s after being down for 6 s, as measured by
tests/compute_shim/test_client.py. After a long outage it would stay unreachable
for minutes.
"""

from __future__ import annotations

DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
RECONNECT_BACKOFF_MS = (100, 500)  # (first and shortest wait, longest wait) after a failed connect


def channel_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    """The options of a channel that dials another Strata process."""
    first, longest = RECONNECT_BACKOFF_MS
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.initial_reconnect_backoff_ms", first),
        ("grpc.min_reconnect_backoff_ms", first),
        ("grpc.max_reconnect_backoff_ms", longest),
    ]


def open_channel(address: str, options: list[tuple[str, int]] | None = None, *, tls_ca: object = None, aio: bool = False):  # type: ignore[no-untyped-def]
    """A channel to another Strata process: TLS when a CA is given (`tls_ca`, a
    PEM file path) or set for the process ($STRATA_TLS_CA, strata/tls.py), else
    plaintext. `aio`: a grpc.aio channel."""
    import grpc

    from strata.tls import channel_credentials, client_ca

    module = grpc.aio if aio else grpc
    options = channel_options() if options is None else options
    ca = client_ca(tls_ca)  # type: ignore[arg-type]
    if ca is None:
        return module.insecure_channel(address, options=options)
    return module.secure_channel(address, channel_credentials(ca), options=options)
