"""Reading a log that holds event types no loaded plugin knows, without failing.

A store can hold events whose type no running plugin registers: a plugin that was
removed or renamed, another application's events in a shared database, a node of a
cluster running a newer plugin set. Commands and runners must not guess at them (their
deciders and projections fail loudly), but reading the log over HTTP or with
``eskit events`` should show them as they are. :class:`TolerantCodec` decodes those
events into :class:`UnknownEventData` (the stored type name, schema version and the
payload as stored) instead of raising :class:`~engine.errors.UnknownEventTypeError`.
"""

from __future__ import annotations

from typing import Any

import attrs

from engine.codec import Codec
from engine.errors import UnknownEventTypeError

__all__ = ["TolerantCodec", "UnknownEventData", "tolerant_codec"]


@attrs.frozen
class UnknownEventData:
    """The data of a stored event whose type no loaded plugin registers.

    Attributes:
        type: The type name it was stored under.
        schema_version: The schema version it was stored at.
        payload: Its payload parsed by the codec's format (JSON: a dict), or its bytes
            as text when they do not parse.
    """

    type: str
    schema_version: int
    payload: Any


@attrs.define
class TolerantCodec(Codec[Any]):
    """A :class:`~engine.codec.Codec` that decodes unknown types to
    :class:`UnknownEventData` instead of raising; for reading only (it cannot encode
    them)."""

    def decode(self, type_name: str, schema_version: int, data: bytes) -> Any:
        """Decode as :class:`~engine.codec.Codec` does; an unknown type becomes
        :class:`UnknownEventData`."""
        try:
            return super().decode(type_name, schema_version, data)
        except UnknownEventTypeError:
            try:
                payload = self.format.loads(data)
            except Exception:  # not in the codec's format: show the bytes as text
                payload = bytes(data).decode("utf-8", errors="replace")
            return UnknownEventData(type_name, schema_version, payload)

    def type_name(self, data: Any) -> str:
        """The registered type name, or the stored one of :class:`UnknownEventData`."""
        if isinstance(data, UnknownEventData):
            return data.type
        return super().type_name(data)


def tolerant_codec(codec: Codec[Any]) -> TolerantCodec:
    """A :class:`TolerantCodec` with ``codec``'s registry, format and converter."""
    return TolerantCodec(
        codec.registry,
        format=codec.format,
        converter=codec.converter,
        fast_decode=codec.fast_decode,
    )
