"""JSON text from json's C encoder, built once.

``json.dumps`` and ``JSONEncoder.encode`` build a C encoder at every call (~2 µs, more
than encoding a stage message takes); the per-task path (stage messages, a job's frame)
and a bulk enqueue's arguments use one built here instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def c_encoder(options: json.JSONEncoder) -> Callable[[Any], str]:
    """json's C encoder with `options`' settings, built once. Without markers it keeps no
    state between calls (so threads may share it): a value that contains itself ends in
    RecursionError, as one nested too deeply does, instead of a ValueError."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # an interpreter without the C accelerator
        return options.encode
    o = options
    strings = (json.encoder.encode_basestring_ascii if o.ensure_ascii
               else json.encoder.encode_basestring)
    chunks = make(None, o.default, strings, o.indent, o.key_separator, o.item_separator,
                  o.sort_keys, o.skipkeys, o.allow_nan)
    return lambda value: "".join(chunks(value, 0))


dumps = c_encoder(json.JSONEncoder())  # as json.dumps(value) writes it
compact = c_encoder(json.JSONEncoder(separators=(",", ":")))  # without spaces
