"""The deployment bundle: the only reader and writer of ``manifest.json`` (docs/bundle.md).

``core``: the ``Bundle`` with typed accessors and mutators; ``records``: the typed manifest
records and every key spelling; ``files``: atomic writes, temp names, content keys, hashes;
``lock``: one writer per bundle and the sweep of what crashed writers left.
"""

from mmdeploy.bundle.core import MANIFEST, SCHEMA, SCHEMA_VERSION, Bundle, check_writable_dir
from mmdeploy.bundle.files import (
    atomic_write_bytes,
    atomic_write_text,
    cached_sha256,
    content_key,
    save_safetensors,
    sha256_file,
    temp_path_for,
)
from mmdeploy.bundle.lock import bundle_lock, lock_policy, sweep
from mmdeploy.bundle.records import ONNX, OV, TRT, ArtifactRecord, CalibrationRecord, SizeRecord, SourceRecord

__all__ = [
    "MANIFEST", "ONNX", "OV", "SCHEMA", "SCHEMA_VERSION", "TRT", "ArtifactRecord", "Bundle", "CalibrationRecord", "SizeRecord", "SourceRecord",
    "atomic_write_bytes", "atomic_write_text", "bundle_lock", "cached_sha256", "check_writable_dir", "content_key", "lock_policy",
    "save_safetensors", "sha256_file", "sweep", "temp_path_for",
]
