"""Initialises Sentry and OpenTelemetry for the README's recipes as an application would,
except that what they send is written to files under RECIPE_DIR (a JSON line per Sentry
envelope item, per finished span) instead of leaving the machine."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import sentry_sdk
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from sentry_sdk.transport import Transport

DIR = os.environ.get("RECIPE_DIR", "")


def _append(name: str, doc: dict[str, Any]) -> None:
    if DIR:
        with open(os.path.join(DIR, name), "a") as f:
            f.write(json.dumps(doc, default=str) + "\n")


class FileTransport(Transport):
    def capture_envelope(self, envelope: Any) -> None:
        for item in envelope.items:
            event = item.get_event()
            if event is not None:
                _append("sentry.jsonl", event)


class FileExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            _append("spans.jsonl", {"name": span.name, "status": span.status.status_code.name,
                                    "description": span.status.description,
                                    "attributes": dict(span.attributes or {}),
                                    "start": span.start_time, "end": span.end_time})
        return SpanExportResult.SUCCESS


sentry_sdk.init(dsn="https://public@example.invalid/1", transport=FileTransport,
                default_integrations=False, auto_enabling_integrations=False)
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
trace.set_tracer_provider(provider)
