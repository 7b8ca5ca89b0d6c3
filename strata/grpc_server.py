"""Serving one component over gRPC: one asyncio loop, health, SIGTERM, limits.

`serve()` binds the address (port 0 picks a free port; the bound address is in the
`event=listening` line, which the local stack and the tests wait for), answers the
standard gRPC health service, and on SIGTERM/SIGINT: reports NOT_SERVING, runs the
component's `stopping` hook (end open streams), lets in-flight calls finish for up
to `grace` seconds, then runs `stopped` (close files) and returns.
"""

from __future__ import annotations

import asyncio
import functools
import signal
from pathlib import Path
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from strata.disk_space import disk_full_error, is_disk_full
from strata.errors import CorruptionError, InvalidArgument, StrataError, abort_with
from strata.logs import EventLogger
from strata.tls import ServerTls

Hook = Callable[[], Awaitable[None]]
T = TypeVar("T")


def server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]


async def serve(
    *,
    listen: str,
    log: EventLogger,
    register: Callable[[grpc.aio.Server], list[str]],
    max_message_bytes: int,
    stopping: Hook | None = None,
    stopped: Hook | None = None,
    grace: float = 5.0,
    started: Callable[[str], None] | None = None,
    tls: ServerTls | None = None,
) -> None:
    server = grpc.aio.server(options=server_options(max_message_bytes))
    service_names = register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        port = server.add_secure_port(listen, tls.grpc_credentials()) if tls is not None else server.add_insecure_port(listen)
    except RuntimeError as exc:
        raise SystemExit(f"cannot listen on {listen}: {exc} (is the port in use?)") from exc
    host = listen.rsplit(":", 1)[0]
    address = f"{host}:{port}"
    await server.start()
    for name in ["", *service_names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("listening", address=address, tls=tls is not None)
    if started is not None:
        started(address)

    await stop.wait()
    log.info("stopping", address=address, grace_s=grace)
    for name in ["", *service_names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    if stopping is not None:
        await stopping()
    await server.stop(grace)
    if stopped is not None:
        await stopped()
    log.info("stopped", address=address)


def is_our_failure(exc: StrataError) -> bool:
    """Corruption and internal errors are ours; every other StrataError is the client's."""
    return isinstance(exc, CorruptionError) or type(exc) is StrataError


def log_rpc_failure(log: EventLogger, method: str, request: object, exc: StrataError, **counts: int) -> None:
    """Client mistakes at info, our own failures (corruption, internal) at error;
    `counts` (e.g. failed=, pages= for a batch logged once) go on the line too."""
    (log.error if is_our_failure(exc) else log.info)(
        "rpc_failed",
        method=method,
        tenant=getattr(request, "tenant_id", None),
        timeline=getattr(request, "timeline_id", None),
        code=exc.code.name,
        error=exc,
        **counts,
    )


async def decode_request(request_type: Any, data: bytes, context: grpc.aio.ServicerContext, log: EventLogger | None, method: str) -> Any:
    """`data` parsed as `request_type`; bytes that are not one answer
    INVALID_ARGUMENT (left to grpc, a deserializer's DecodeError is UNKNOWN)."""
    try:
        return request_type.FromString(data)
    except DecodeError as exc:
        error = InvalidArgument(f"the request is not a valid {request_type.DESCRIPTOR.full_name}: {exc}")
        if log is not None:
            log_rpc_failure(log, method, None, error)
        await abort_with(context, error)


def unary_handler(fn: Callable[..., Awaitable[object]], request_type: Any, response_type: Any) -> grpc.RpcMethodHandler:
    """A unary-unary method handler for a generic service, (de)serializing with
    the message types; undecodable request bytes answer INVALID_ARGUMENT."""
    log = getattr(getattr(fn, "__self__", None), "log", None)

    async def decoded(data: bytes, context: grpc.aio.ServicerContext) -> object:
        return await fn(await decode_request(request_type, data, context, log, fn.__name__), context)

    return grpc.unary_unary_rpc_method_handler(
        decoded, request_deserializer=None, response_serializer=response_type.SerializeToString
    )


def decoding_service(servicer: object, service: ServiceDescriptor, log: EventLogger) -> grpc.GenericRpcHandler:
    """The generic handler of `service` (a protobuf service descriptor) served by
    `servicer`'s methods of the same names, in place of the generated
    `add_..._to_server`: each request message is decoded in the handler, so bytes
    that are not one answer INVALID_ARGUMENT (`decode_request`) and not UNKNOWN."""
    handlers = {}
    for method in service.methods:
        fn = getattr(servicer, method.name)
        request_type, response_type = GetMessageClass(method.input_type), GetMessageClass(method.output_type)
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                _decoding_stream(fn, request_type, log, method.name),
                request_deserializer=None,
                response_serializer=response_type.SerializeToString,
            )
        elif not method.client_streaming and not method.server_streaming:
            handlers[method.name] = unary_handler(fn, request_type, response_type)
        else:
            raise NotImplementedError(f"{service.full_name}.{method.name}: only unary and bidi methods are served here")
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def _decoding_stream(fn: Callable[..., AsyncIterator[object]], request_type: Any, log: EventLogger, method: str) -> Callable[..., AsyncIterator[object]]:
    """A bidi handler taking message bytes: `fn` gets them decoded, one by one."""

    async def handler(messages: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[object]:
        async def decoded() -> AsyncIterator[object]:
            async for data in messages:
                yield await decode_request(request_type, data, context, log, method)

        async for response in fn(decoded(), context):
            yield response

    return handler


def stream_handler(fn: Callable[..., object], request_type: Any, response_type: Any) -> grpc.RpcMethodHandler:
    """A bidi-streaming method handler for a generic service (AppendStream);
    `request_type` None hands the handler each message's bytes."""
    return grpc.stream_stream_rpc_method_handler(
        fn,
        request_deserializer=None if request_type is None else request_type.FromString,
        response_serializer=response_type.SerializeToString,
    )


def unary_rpc(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Wrap a servicer method (with `self.log`): StrataError -> its gRPC status."""

    @functools.wraps(fn)
    async def handler(self, request, context: grpc.aio.ServicerContext) -> T:  # type: ignore[no-untyped-def]
        try:
            return await fn(self, request, context)
        except StrataError as exc:
            log_rpc_failure(self.log, fn.__name__, request, exc)
            await abort_with(context, exc)
        except OSError as exc:
            # A write that ran out of space where no component turned it into DiskFull:
            # still RESOURCE_EXHAUSTED with the directory, never UNKNOWN.
            if not is_disk_full(exc):
                raise
            where = Path(exc.filename).parent if exc.filename else Path(".")
            error = disk_full_error(self.log.component, where, f"{fn.__name__} did not complete", exc)
            log_rpc_failure(self.log, fn.__name__, request, error)
            await abort_with(context, error)

    return handler
