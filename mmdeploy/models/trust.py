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

Keyword arguments of a factory (``--arch-kwargs '{"model_name": "resnet18"}'``, ``arch_kwargs`` in a run
config) follow the same rule: what the user allows is a *call*, ``SPEC(**kwargs)``. A file (a manifest,
a checkpoint's ``mmdeploy`` entry) that records a call of user code is rebuilt only when the user names
that same call again (or passes ``--trust-code-from-files``); a registered factory may take plain-data
kwargs from a file, as before.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from mmdeploy.errors import MMDeployError

TRUST_FLAG = "--trust-code-from-files"


@dataclass(frozen=True)
class CodePolicy:
    user_calls: frozenset[tuple[str, str]] = frozenset()  # (module:factory, its kwargs as canonical JSON) the user named
    trust_files: bool = False  # the user passed --trust-code-from-files (or set it in their run config)
    trust_origin: str = ""  # which of the two, for the warning

    @property
    def user_specs(self) -> frozenset[str]:
        return frozenset(spec for spec, _ in self.user_calls)


_POLICY: ContextVar[CodePolicy | None] = ContextVar("mmdeploy_code_policy", default=None)
_NAMED_BY_CALLER: set[tuple[str, str]] = set()  # calls a Python caller passed as arch=/arch_kwargs= outside any policy


def _current() -> CodePolicy:
    return _POLICY.get() or CodePolicy(frozenset(_NAMED_BY_CALLER))


def canonical_kwargs(kwargs: dict | None) -> str:
    """One text per set of kwargs (key order and tuple/list spelling do not matter): what a call is compared by."""
    return json.dumps(kwargs or {}, sort_keys=True, separators=(",", ":"))


def note_user_arch(arch: str | None, arch_kwargs: dict | None = None) -> None:
    """The caller (not a file) named ``arch`` (with ``arch_kwargs``): outside a policy, remember the call for this process."""
    if isinstance(arch, str) and is_code_spec(arch) and _POLICY.get() is None:
        _NAMED_BY_CALLER.add((arch, canonical_kwargs(arch_kwargs)))


@contextmanager
def user_code_policy(arch: str | Iterable[str | tuple[str | None, dict | None] | None] | None = None, trust_files: bool = False,
                     arch_kwargs: dict | None = None, trust_origin: str = "trust_code_from_files=True was passed"):
    """Within this block, the user's own ``arch`` spec(s), each with its kwargs, and, with ``trust_files``, code named by
    files may be imported. ``arch`` is one spec (its kwargs: ``arch_kwargs``) or several specs or (spec, kwargs) pairs
    (a run config's models); ``trust_origin`` says where the trust came from (for the warning). Adds to the enclosing policy."""
    if isinstance(arch, str) or arch is None:
        pairs = [(arch, arch_kwargs)]
    else:
        pairs = [item if isinstance(item, tuple) else (item, None) for item in arch]
    calls = {(spec, canonical_kwargs(kw)) for spec, kw in pairs if isinstance(spec, str) and is_code_spec(spec)}
    outer = _current()
    trusted = outer.trust_files or bool(trust_files)
    token = _POLICY.set(CodePolicy(outer.user_calls | calls, trusted,
                                   outer.trust_origin if outer.trust_files else trust_origin if trusted else ""))
    try:
        yield
    finally:
        _POLICY.reset(token)


def parse_arch_kwargs(text: str | dict | None) -> dict | None:
    """``--arch-kwargs`` as a dict: a JSON object of plain values (read as data, never evaluated); None when not given."""
    if text is None or isinstance(text, dict):
        if text is not None:
            check_user_kwargs(text)
        return text
    example = "e.g. --arch-kwargs '{\"model_name\": \"resnet18\", \"num_classes\": 10}'"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MMDeployError(f"--arch-kwargs {text!r} is not JSON ({exc.msg} at character {exc.pos})", example) from None
    if not isinstance(value, dict):
        raise MMDeployError(f"--arch-kwargs {text!r} is a JSON {type(value).__name__}, not an object of keyword arguments", example)
    return value


def check_user_kwargs(kwargs: dict) -> None:
    """Kwargs the user gives must be plain data too: the manifest records them, and later steps compare them."""
    if not isinstance(kwargs, dict):
        raise MMDeployError(f"architecture kwargs are a {type(kwargs).__name__}, not a dict", "give keyword arguments as a dict of plain values")
    _check_plain(kwargs, "the given architecture kwargs")


def is_code_spec(name: str) -> bool:
    return ":" in name


def authorize_arch(name: str, kwargs: dict | None = None, source: str | None = None, kwargs_source: str | None = None) -> None:
    """Raise unless ``name`` (with ``kwargs``) may be built.

    ``source`` is the file the name was read from (None: the user gave it); ``kwargs_source``
    the file the kwargs were read from (default: ``source``). Registered names are always
    allowed; kwargs read from a file must be plain data whatever the name, and reach user code
    only as a call the user named (spec and kwargs) or with the trust flag.
    """
    from mmdeploy.models.registry import is_registered

    kwargs = kwargs or {}
    origin = source or kwargs_source
    if origin:
        _check_plain(kwargs, origin)
    if origin is None or is_registered(name) or not is_code_spec(name):
        return  # the user's own call, a registered architecture, or an unknown name (the registry says so)
    policy = _current()
    call = f"{name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    if (name, canonical_kwargs(kwargs)) in policy.user_calls:
        return
    if policy.trust_files:
        warnings.warn(f"importing and calling {call} as named by {origin} ({policy.trust_origin})", stacklevel=2)
        return
    if name in policy.user_specs:  # the user named this code themselves, with other kwargs
        again = f"--arch {name} --arch-kwargs '{json.dumps(kwargs, sort_keys=True)}'"
        named = [json.loads(kw) for spec, kw in sorted(policy.user_calls) if spec == name]
        raise MMDeployError(
            f"{origin} calls {call}, but you named {name} with kwargs {', '.join(map(repr, named))}; "
            "kwargs reach your code only as you give them, so it was not called",
            f"to rebuild it as recorded pass {again} (or {TRUST_FLAG}); for other kwargs calibrate a new --out",
        )
    # The hint never repeats the file's spec: "pass --arch <spec>" would be advice to run whatever the file names.
    raise MMDeployError(
        f"{origin} names code to import and call: {call}; files may name only registered architectures, so it was not imported",
        f"only if you trust this file, pass {TRUST_FLAG}, which lets checkpoints, sidecars and bundles name module:factory code "
        "that is then imported and run; for a bundle you made with your own --arch (and --arch-kwargs), pass those same flags again; "
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
