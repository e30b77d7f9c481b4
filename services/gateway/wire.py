"""The gateway's method handlers, guarded: bytes that are not the request, and stream slots.

gRPC turns a request that does not deserialize into INTERNAL ("Exception deserializing
request!"), as if the hub were at fault. :func:`add_guarded` registers a service's generated
handlers with a deserializer that never raises (it hands over a :class:`Malformed` instead)
and a behaviour that answers it INVALID_ARGUMENT naming the message type and, for a string
that is not UTF-8, the field; the bytes themselves are never echoed. Unary requests, every
item of a request stream, unary and streaming responses alike. Request-streaming methods
also take a :class:`~services.gateway.limits.StreamLimits` slot for as long as they run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor

from services.gateway.limits import StreamLimits, certificate_name
from services.gateway.rpc import RejectionError, Violation, abort

#: Nested messages inspected when looking for the string that is not UTF-8.
MAX_DEPTH = 32


@dataclass(frozen=True)
class Malformed:
    """A request message whose bytes did not parse."""

    type_name: str
    #: Dotted path of a string field whose bytes are not UTF-8, if that is what failed.
    bad_string: str | None

    def rejection(self, where: str = "the request") -> RejectionError:
        """INVALID_ARGUMENT saying what is wrong, without the bytes."""
        if self.bad_string is not None:
            violations = [Violation(self.bad_string, "is not valid UTF-8")]
            why = f"{self.bad_string} is not valid UTF-8"
        else:
            violations = []
            why = "the bytes do not parse as that message (protobuf wire format)"
        return RejectionError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{where} is not a valid {self.type_name}: {why}",
            violations,
        )


class _BrokenError(Exception):
    """The wire format itself is broken (no field to name)."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _BrokenError
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _length_delimited(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(field number, bytes) of every length-delimited field; _BrokenError on bad wire format."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, pos = _varint(data, pos)
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
        elif wire_type == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise _BrokenError
            yield number, data[pos : pos + length]
            pos += length
        else:
            raise _BrokenError


def bad_string_field(
    descriptor: Descriptor, data: bytes, prefix: str = "", depth: int = 0
) -> str | None:
    """The first string field (dotted path) of ``data`` whose bytes are not UTF-8, if any."""
    try:
        for number, chunk in _length_delimited(data):
            field = descriptor.fields_by_number.get(number)
            if field is None:
                continue
            name = prefix + field.name
            if field.type == FieldDescriptor.TYPE_STRING:
                try:
                    chunk.decode("utf-8")
                except UnicodeDecodeError:
                    return name
            elif field.message_type is not None and depth < MAX_DEPTH:
                found = bad_string_field(field.message_type, chunk, f"{name}.", depth + 1)
                if found is not None:
                    return found
    except _BrokenError:
        return None
    return None


def safe_deserializer(
    descriptor: Descriptor, parse: Callable[[bytes], Any]
) -> Callable[[bytes], Any]:
    """``parse``, but a :class:`Malformed` instead of an exception."""

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception:  # DecodeError; UnicodeDecodeError, RecursionError on other backends
            return Malformed(descriptor.full_name, bad_string_field(descriptor, data))

    return deserialize


class GuardedItems:
    """A request stream whose malformed items raise (and are remembered as) a rejection."""

    def __init__(self, items: Iterator[Any]) -> None:
        self._items = items
        self._index = 0
        self.rejection: RejectionError | None = None

    def __iter__(self) -> GuardedItems:
        return self

    def __next__(self) -> Any:
        item = next(self._items)
        index = self._index
        self._index += 1
        if isinstance(item, Malformed):
            self.rejection = item.rejection(f"item {index} of the stream")
            raise self.rejection
        return item


Behavior = Callable[[Any, grpc.ServicerContext], Any]


def _guard_unary_request(
    behavior: Behavior, limits: StreamLimits | None = None, method: str = ""
) -> Behavior:
    def guarded(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, Malformed):
            abort(context, request.rejection())
        if limits is None:
            return behavior(request, context)
        try:
            with _slot(limits, context, method):
                return behavior(request, context)
        except RejectionError as rejection:
            abort(context, rejection)

    return guarded


@contextlib.contextmanager
def _slot(
    limits: StreamLimits | None, context: grpc.ServicerContext, method: str
) -> Iterator[None]:
    if limits is None:
        yield
        return
    slot = limits.admit(certificate_name(context), method)
    # The call ending frees the slot even if the handler is never resumed to finish.
    context.add_callback(slot.release)
    try:
        yield
    finally:
        slot.release()


def _guard_stream_unary(behavior: Behavior, limits: StreamLimits | None, method: str) -> Behavior:
    def guarded(request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:
        items = GuardedItems(request_iterator)
        try:
            with _slot(limits, context, method):
                response = behavior(items, context)
        except RejectionError as rejection:
            abort(context, rejection)
        if items.rejection is not None:
            abort(context, items.rejection)
        return response

    return guarded


def _guard_stream_stream(behavior: Behavior, limits: StreamLimits | None, method: str) -> Behavior:
    def guarded(request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        items = GuardedItems(request_iterator)
        try:
            with _slot(limits, context, method):
                yield from behavior(items, context)
        except RejectionError as rejection:
            abort(context, rejection)
        if items.rejection is not None:
            abort(context, items.rejection)

    return guarded


def guard(
    handler: grpc.RpcMethodHandler, descriptor: Descriptor, limits: StreamLimits | None, method: str
) -> grpc.RpcMethodHandler:
    """``handler`` with a safe deserializer, malformed requests refused, streams slotted."""
    assert handler.request_deserializer is not None
    deserializer = safe_deserializer(descriptor, handler.request_deserializer)
    serializer = handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(
            _guard_stream_stream(handler.stream_stream, limits, method),
            request_deserializer=deserializer,
            response_serializer=serializer,
        )
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(
            _guard_stream_unary(handler.stream_unary, limits, method),
            request_deserializer=deserializer,
            response_serializer=serializer,
        )
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(
            _guard_unary_request(handler.unary_stream),
            request_deserializer=deserializer,
            response_serializer=serializer,
        )
    return grpc.unary_unary_rpc_method_handler(
        _guard_unary_request(handler.unary_unary, limits, method),
        request_deserializer=deserializer,
        response_serializer=serializer,
    )


class _Capture:
    """Stands in for the server while a generated ``add_*_to_server`` registers handlers."""

    def __init__(self) -> None:
        self.handlers: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Ignored: the registered handlers below are the same ones."""

    def add_registered_method_handlers(
        self, service_name: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.handlers[service_name] = handlers


def add_guarded(
    server: grpc.Server,
    service: ServiceDescriptor,
    add_to_server: Callable[[Any, Any], None],
    servicer: Any,
    limits: StreamLimits | None,
    *,
    bulk: frozenset[str] = frozenset(),
) -> None:
    """Register ``servicer`` like the generated ``add_to_server`` would, every handler guarded.

    Request-streaming methods and the unary methods named in ``bulk`` (device feeds) take a
    ``limits`` slot while they run; the other unary methods (life-safety calls) never wait
    for one.
    """
    capture = _Capture()
    add_to_server(servicer, capture)
    generated = capture.handlers[service.full_name]
    handlers = {
        name: guard(
            handler,
            service.methods_by_name[name].input_type,
            limits if handler.request_streaming or name in bulk else None,
            name,
        )
        for name, handler in generated.items()
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)
