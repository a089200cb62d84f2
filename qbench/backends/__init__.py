"""One registry of the places a student runs: PyTorch, the integer engine and exported runtimes.

A backend is one registration, a :class:`BackendSpec` made by the module that implements it:
its name (the CLI and record value), report label and plot tag, the library whose version
provenance records, its pytest marker, the capabilities a student needs to run on it, and
either an in-process measurement (``measure``, PyTorch and the engine) or an exporter, a runner
and the runner option sets conformance checks (an exported runtime, which the sweep measures by
its one export road, :mod:`qbench.sweep.points`).

Modules are found through the ``qbench.backends`` entry points of ``pyproject.toml`` (read
from the installed metadata, or from the file itself in a source checkout that is not
installed), so adding a backend touches its module, that table and its tests, nothing else::

    [project.entry-points."qbench.backends"]
    mybackend = "mypackage.mybackend"   # the module calls qbench.backends.register(BackendSpec(...))

A runtime's module is imported to register it, but imports its runtime only when used.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from qbench.errors import ConfigError

ENTRY_POINT_GROUP = "qbench.backends"
REFERENCE = "torch"
"""The backend every other is checked against: the Brevitas model in PyTorch."""


@dataclasses.dataclass(frozen=True)
class BackendSpec:
    """Everything qbench knows about one backend."""

    name: str  # the CLI, record and folder value
    label: str  # how reports and the README name it
    tag: str  # its short tag on plots
    description: str
    library: str | None  # distribution (= import) name of the runtime: versions, install checks; None: qbench
    order: int  # place in the default backend list (the reference first)
    requires: frozenset[str] = frozenset()  # capabilities (qbench.capabilities) a student must have
    measure: Callable[..., dict[str, Any]] | None = None  # in-process: measure(pipe, point) of a QAT point
    scores: Callable[..., Any] | None = None  # in-process: scores(pipe, point, qmodel), a second reference
    exporter: Callable[..., Any] | None = None  # exporter(qmodel, *, out_dir, example, name, lstm_graph) -> Artifact
    runner: Callable[..., Any] | None = None  # runner(artifact, *, threads, **options) -> run(x) -> logits
    variants: Callable[..., dict[str, dict[str, Any]]] | None = None  # artifact -> named runner option sets
    files_from_onnx: Callable[[Path], tuple[Path, ...]] | None = None  # a float ONNX -> the files it loads
    lstm_graphs: tuple[str, ...] = ()  # LSTM lowerings measured side by side (qbench.export.base.LSTMGraph)
    extra_figures: Callable[..., dict[str, Any]] | None = None  # exported: (pipe, point, artifact) -> more figures
    thread_counts: tuple[int, ...] | None = None  # fixed thread counts it is timed at (None: the sweep's)

    def __post_init__(self) -> None:
        if (self.measure is None) == (self.exporter is None):
            raise ValueError(f"backend {self.name!r}: give either measure (in-process) or exporter+runner (exported)")
        if self.exporter is not None and None in (self.runner, self.variants, self.files_from_onnx):
            raise ValueError(f"backend {self.name!r}: an exported backend needs a runner, variants and files_from_onnx")

    @property
    def exported(self) -> bool:
        """It ships a file a runtime loads (and gets the fp32 student exported as its baseline)."""
        return self.exporter is not None

    @property
    def marker(self) -> str:
        """The pytest marker of tests that need this backend's runtime."""
        return f"requires_{self.name}"

    def installed(self) -> bool:
        return self.library is None or importlib.util.find_spec(self.library) is not None

    def supports(self, capabilities: frozenset[str]) -> bool:
        return self.requires <= capabilities


_SPECS: dict[str, BackendSpec] = {}
_LOADED = False


def register(spec: BackendSpec) -> BackendSpec:
    """Add ``spec`` (called by its module at import); registering a name twice is a bug."""
    if _SPECS.get(spec.name, spec) is not spec:
        raise ValueError(f"backend {spec.name!r} is registered twice")
    _SPECS[spec.name] = spec
    return spec


def _entry_points() -> dict[str, str]:
    """name -> module from the installed metadata, else from pyproject.toml beside the package."""
    found = {ep.name: ep.value for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    if found:
        return found
    import tomllib

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    with pyproject.open("rb") as f:
        return dict(tomllib.load(f)["project"]["entry-points"][ENTRY_POINT_GROUP])


def _load() -> None:
    global _LOADED
    if _LOADED:
        return
    for name, module in _entry_points().items():
        importlib.import_module(module.split(":")[0])
        if name not in _SPECS:
            raise ValueError(f"entry point {name} = {module} did not register a backend named {name!r}")
    _LOADED = True


def specs() -> tuple[BackendSpec, ...]:
    """Every registered backend, reference first."""
    _load()
    return tuple(sorted(_SPECS.values(), key=lambda s: (s.order, s.name)))


def names() -> tuple[str, ...]:
    return tuple(s.name for s in specs())


def exported() -> tuple[Backend, ...]:
    """The backends that ship an artifact (ONNX Runtime, OpenVINO, ...)."""
    return tuple(Backend(s.name) for s in specs() if s.exported)


def get(name: str, *, owner: str = "backend") -> BackendSpec:
    """The spec of ``name``; a one-line ConfigError naming the known ones if there is none."""
    _load()
    spec = _SPECS.get(str(name))
    if spec is None:
        raise ConfigError(f"{owner} must be one of {', '.join(names())}, got {name!r}")
    return spec


class Backend(str):
    """The name of a registered backend: a ``str`` (its JSON, CLI and record value) that knows its spec."""

    def __new__(cls, name: str) -> Backend:
        return super().__new__(cls, get(str(name)).name)

    @property
    def value(self) -> str:
        return str(self)

    @property
    def spec(self) -> BackendSpec:
        return get(self)

    def __repr__(self) -> str:
        return f"Backend({str(self)!r})"
