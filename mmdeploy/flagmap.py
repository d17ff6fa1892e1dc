"""The one mapping from run-config fields and CLI flags to the keywords of each step's library call.

:data:`mmdeploy.config.SCHEMA` is the table: each field lists the flags it stands for and, where the
value goes into the step's library call as is, that call's keyword. ``mmdeploy run`` builds its calls
with :func:`step_keywords` (a config section's values), the commands with :func:`flag_keywords` (their
parsed flags), so a setting added to one without the other is caught by tests/test_flagmap.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from mmdeploy.config import SCHEMA, Field, Flag, ModelList

# The step a config section configures: [[model]] entries describe the checkpoint that calibrate reads.
SECTION_STEP = {"model": "calibrate", "calibrate": "calibrate", "export": "export", "eval": "eval", "bench": "bench", "report": "report"}


def schema_fields() -> Iterator[tuple[str, str, Field]]:
    """Every field of the schema as (section, key, field); top-level keys have section ""."""
    for section, spec in SCHEMA.items():
        if isinstance(spec, Field):
            yield "", section, spec
        else:
            table = spec.fields if isinstance(spec, ModelList) else spec
            for key, fld in table.items():
                yield section, key, fld


def schema_flags() -> Iterator[tuple[str, str, Flag]]:
    """Every (section, key, flag) of the schema."""
    for section, key, fld in schema_fields():
        for flag in fld.flags:
            yield section, key, flag


def _present(value: Any) -> bool:
    return value is not None and value != () and value != []


def step_keywords(section: str, values: dict) -> dict:
    """The library keywords of a config section's values that were given (absent keys keep the library's defaults)."""
    command = SECTION_STEP[section]
    out = {}
    for sec, key, flag in schema_flags():
        if sec == section and flag.command == command and flag.keyword and _present(values.get(key)):
            out[flag.keyword] = values[key]
    return out


def flag_keywords(command: str, given: dict[str, Any], parsers: dict[str, Callable] | None = None) -> dict:
    """The library keywords of a command's flags (``{"--warmup": 5, ...}``); flags not given (None) keep the library's
    defaults; ``parsers`` turn a flag's text into the library's value (e.g. "0.5,0.5,0.5" into a list)."""
    parsers = parsers or {}
    out = {}
    for _, _, flag in schema_flags():
        if flag.command == command and flag.keyword and flag.flag in given:
            value = given[flag.flag]
            value = parsers[flag.flag](value) if flag.flag in parsers and value is not None else value
            if _present(value):
                out[flag.keyword] = list(value) if isinstance(value, tuple) else value
    return out
