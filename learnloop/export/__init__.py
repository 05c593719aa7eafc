"""Fine-tuning datasets from what learnloop collected: SFT, DPO and KTO, per group.

``await export(settings, bootstrap, group, fmt, out, ...)`` reads the events topic
once and streams JSONL rows in the layouts TRL's trainers and the OpenAI
fine-tuning API read (see ``docs/EXPORT.md``): only the group's own events, its
owner's tenant only, forgotten users left out and personal data redacted.
"""

from learnloop.export.core import (
    ExportSummary,
    default_owner,
    export,
    export_to_tempfile,
    forgotten_users,
    parse_time_ms,
)
from learnloop.export.rows import FORMATS, LAYOUTS, ExportError, Format, Layout

__all__ = [
    "FORMATS",
    "LAYOUTS",
    "ExportError",
    "ExportSummary",
    "Format",
    "Layout",
    "default_owner",
    "export",
    "export_to_tempfile",
    "forgotten_users",
    "parse_time_ms",
]
