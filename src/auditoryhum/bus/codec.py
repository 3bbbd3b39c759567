"""Protobuf on the wire: the payload is the serialized message, headers name its type and schema version."""

from __future__ import annotations

from google.protobuf import symbol_database
from google.protobuf.message import DecodeError, Message

from auditoryhum.v1 import pipeline_pb2  # noqa: F401  (registers the message types)

SCHEMA_VERSION = "v1"
PACKAGE = "auditoryhum.v1."  # only our own contracts are decoded
TYPE_HEADER = "message-type"
VERSION_HEADER = "schema-version"


class CodecError(ValueError):
    """A record that is not a message we understand."""


def encode(message: Message) -> tuple[bytes, dict[str, str]]:
    return message.SerializeToString(), headers(message.DESCRIPTOR.full_name)


def headers(type_name: str) -> dict[str, str]:
    """The headers of a record carrying a serialized ``type_name``."""
    return {TYPE_HEADER: type_name, VERSION_HEADER: SCHEMA_VERSION}


def decode(value: bytes, headers: dict[str, str]) -> Message:
    type_name = headers.get(TYPE_HEADER, "")
    if headers.get(VERSION_HEADER, SCHEMA_VERSION) != SCHEMA_VERSION:
        raise CodecError(f"unsupported schema version {headers.get(VERSION_HEADER)!r}")
    if not type_name.startswith(PACKAGE):
        raise CodecError(f"unknown message type {type_name!r}")
    try:
        cls = symbol_database.Default().GetSymbol(type_name)
    except KeyError:
        raise CodecError(f"unknown message type {type_name!r}") from None
    message = cls()
    try:
        message.ParseFromString(value)
    except DecodeError as exc:
        raise CodecError(f"malformed {type_name}: {exc}") from exc
    return message
