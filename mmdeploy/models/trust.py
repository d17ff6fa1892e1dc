"""Which architectures a name may come from: the one place that decides whether code is imported.

A checkpoint, its safetensors metadata, a ``.json`` sidecar and a bundle's ``manifest.json`` are
data: they may name a *registered* architecture only. A ``package.module:factory`` spec imports
and calls code, so it is accepted only from the user: ``--arch`` on the command line, an
``arch`` in the ``mmdeploy run`` config they wrote, or an argument in Python. A file may name code
only when the user repeats that spec with ``--arch`` or passes ``--trust-code-from-files``.

The user's permissions are a context (``user_code_policy``) rather than an argument threaded
through every reader: the CLI sets it once per command, ``mmdeploy run`` once per config, and
every reader (the checkpoint loader, ``Bundle.open``) asks ``authorize_arch``. Nested policies add
up, so an outer ``--trust-code-from-files`` still holds inside ``mmdeploy run``. Outside any
policy (a Python session), a spec the caller passed as ``arch=`` to a loader counts as named by
the user for the rest of the process, so ``calibrate_to_bundle(..., arch=SPEC)`` followed by
``export_bundle(...)`` works as it does on the command line with ``--arch SPEC``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from mmdeploy.errors import MMDeployError

TRUST_FLAG = "--trust-code-from-files"


@dataclass(frozen=True)
class CodePolicy:
    user_specs: frozenset[str] = frozenset()  # module:factory specs the user named themselves
    trust_files: bool = False  # the user passed --trust-code-from-files (or set it in their run config)
    trust_origin: str = ""  # which of the two, for the warning


_POLICY: ContextVar[CodePolicy | None] = ContextVar("mmdeploy_code_policy", default=None)
_NAMED_BY_CALLER: set[str] = set()  # specs a Python caller passed as arch= outside any policy


def _current() -> CodePolicy:
    return _POLICY.get() or CodePolicy(frozenset(_NAMED_BY_CALLER))


def note_user_arch(arch: str | None) -> None:
    """The caller (not a file) named ``arch``: outside a policy, remember it for this process."""
    if isinstance(arch, str) and is_code_spec(arch) and _POLICY.get() is None:
        _NAMED_BY_CALLER.add(arch)


@contextmanager
def user_code_policy(arch: str | Iterable[str | None] | None = None, trust_files: bool = False, trust_origin: str = "trust_code_from_files=True was passed"):
    """Within this block, the user's own ``arch`` spec(s) and, with ``trust_files``, specs read
    from files may be imported; ``trust_origin`` says where that trust came from (for the warning).
    Adds to the enclosing policy."""
    specs = [arch] if isinstance(arch, str) or arch is None else list(arch)
    outer = _current()
    trusted = outer.trust_files or bool(trust_files)
    token = _POLICY.set(CodePolicy(outer.user_specs | {s for s in specs if isinstance(s, str) and ":" in s}, trusted,
                                   outer.trust_origin if outer.trust_files else trust_origin if trusted else ""))
    try:
        yield
    finally:
        _POLICY.reset(token)


def is_code_spec(name: str) -> bool:
    return ":" in name


def authorize_arch(name: str, kwargs: dict | None = None, source: str | None = None, kwargs_source: str | None = None) -> None:
    """Raise unless ``name`` (with ``kwargs``) may be built.

    ``source`` is the file the name was read from (None: the user gave it); ``kwargs_source``
    the file the kwargs were read from (default: ``source``). Registered names are always
    allowed; kwargs read from a file must be plain data whatever the name.
    """
    from mmdeploy.models.registry import is_registered

    kwargs = kwargs or {}
    if kwargs_source or source:
        _check_plain(kwargs, kwargs_source or source)
    if source is None or is_registered(name) or not is_code_spec(name):
        return  # the user's own choice, a registered architecture, or an unknown name (the registry says so)
    policy = _current()
    call = f"{name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    if name in policy.user_specs:
        return
    if policy.trust_files:
        warnings.warn(f"importing and calling {call} as named by {source} ({policy.trust_origin})", stacklevel=2)
        return
    # The hint never repeats the file's spec: "pass --arch <spec>" would be advice to run whatever the file names.
    raise MMDeployError(
        f"{source} names code to import and call: {call}; files may name only registered architectures, so it was not imported",
        f"only if you trust this file, pass {TRUST_FLAG}, which lets checkpoints, sidecars and bundles name module:factory code "
        "that is then imported and run; for a bundle you made with your own --arch, pass that same --arch again; "
        "otherwise use a registered architecture (`mmdeploy archs`)",
    )


_PLAIN_SCALARS = (str, int, float, bool, type(None))


def _check_plain(value, source: str, path: str = "arch_kwargs") -> None:
    """Only JSON-like data may reach a factory from a file (no tensors, no objects)."""
    if isinstance(value, _PLAIN_SCALARS):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, source, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise MMDeployError(f"{source}: {path} has a non-string key {k!r}", "architecture kwargs in a file must be plain data (JSON-like)")
            _check_plain(v, source, f"{path}.{k}")
        return
    raise MMDeployError(f"{source}: {path} is a {type(value).__name__}, not plain data", "architecture kwargs in a file must be plain data (JSON-like)")
