"""The contract on the wire: Avro schemas for agent events and their codec.

``avro/`` holds one ``.avsc`` per record; ``codec`` reads and writes Avro
single-object encoding and JSON, and ``validate`` checks an event against the
schema and the semantic rules of the brief, naming the field that is wrong.
"""

from schemas.codec import DecodeError, EventCodec, WireFormat
from schemas.events import EVENT_TYPES, FEEDBACK_TYPES, EventRecord
from schemas.validate import Limits, from_json_event, to_json_event, validate_record

__all__ = [
    "EVENT_TYPES",
    "FEEDBACK_TYPES",
    "DecodeError",
    "EventCodec",
    "EventRecord",
    "Limits",
    "WireFormat",
    "from_json_event",
    "to_json_event",
    "validate_record",
]
