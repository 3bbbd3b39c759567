"""Hypothesis strategies for any protobuf message, built from its descriptor: every field may be set or left out,
with values from the whole range of its type (NaN and infinities included), text from all of Unicode, small
repeated fields and maps, and nested messages down to a few levels."""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

F = FieldDescriptor
MAX_DEPTH = 3
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)  # any Unicode that UTF-8 can carry
SCALARS = {
    F.TYPE_INT32: st.integers(-2**31, 2**31 - 1), F.TYPE_SINT32: st.integers(-2**31, 2**31 - 1),
    F.TYPE_SFIXED32: st.integers(-2**31, 2**31 - 1), F.TYPE_INT64: st.integers(-2**63, 2**63 - 1),
    F.TYPE_SINT64: st.integers(-2**63, 2**63 - 1), F.TYPE_SFIXED64: st.integers(-2**63, 2**63 - 1),
    F.TYPE_UINT32: st.integers(0, 2**32 - 1), F.TYPE_FIXED32: st.integers(0, 2**32 - 1),
    F.TYPE_UINT64: st.integers(0, 2**64 - 1), F.TYPE_FIXED64: st.integers(0, 2**64 - 1),
    F.TYPE_FLOAT: st.floats(width=32), F.TYPE_DOUBLE: st.floats(), F.TYPE_BOOL: st.booleans(),
    F.TYPE_STRING: TEXT, F.TYPE_BYTES: st.binary(max_size=256),
}


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    cls = GetMessageClass(descriptor)
    fields = {f.name: _field(f, depth) for f in descriptor.fields if depth < MAX_DEPTH or f.type != F.TYPE_MESSAGE}
    return st.fixed_dictionaries({}, optional=fields).map(lambda values: _build(cls, values))


def _field(field: FieldDescriptor, depth: int) -> st.SearchStrategy:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key, value = (field.message_type.fields_by_name[n] for n in ("key", "value"))
        return st.dictionaries(_value(key, depth), _value(value, depth), max_size=3)
    value = _value(field, depth)
    return st.lists(value, max_size=3) if field.is_repeated else value


def _value(field: FieldDescriptor, depth: int) -> st.SearchStrategy:
    if field.type == F.TYPE_MESSAGE:
        return messages(field.message_type, depth + 1)
    if field.type == F.TYPE_ENUM:  # declared values and unknown ones: open enums keep what they do not know
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.integers(-2**31, 2**31 - 1))
    return SCALARS[field.type]


def _build(cls, values: dict) -> Message:
    message = cls()
    for name, value in values.items():  # one at a time: a later member of a oneof replaces an earlier one
        target = getattr(message, name) if not isinstance(value, (int, float, str, bytes)) else None
        if isinstance(value, Message):
            target.CopyFrom(value)
        elif isinstance(value, dict):
            for k, v in value.items():
                target[k].CopyFrom(v) if isinstance(v, Message) else target.__setitem__(k, v)
        elif isinstance(value, list):
            target.extend(value)
        else:
            setattr(message, name, value)
    return message
