"""The index seams (storage/protocols.py): every backend has every method of every protocol, with
the protocol's parameters; the layers above storage see it only through those protocols."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest

import dicomhub
from dicomhub.storage import protocols
from dicomhub.storage.postgres_index import PostgresIndex
from dicomhub.storage.sqlite_index import SqliteIndex

CONCERNS = [
    protocols.IndexLifecycle,
    protocols.Uploads,
    protocols.Instances,
    protocols.InstanceSearch,
    protocols.BlobDeletions,
    protocols.ChangeFeed,
    protocols.AuditSink,
    protocols.FhirCheckpoints,
    protocols.Jobs,
    protocols.ExtendedTagIndex,
    protocols.Workitems,
    protocols.WorkitemEvents,
]


def methods(protocol: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(value)
        for name, value in vars(protocol).items()
        if inspect.isfunction(value) and not name.startswith("_")
    }


def test_the_index_store_is_every_concern_and_nothing_else():
    assert set(protocols.IndexStore.__mro__) >= set(CONCERNS)
    assert methods(protocols.IndexStore) == {}  # no method outside a concern
    names = [name for protocol in CONCERNS for name in methods(protocol)]
    assert len(names) == len(set(names))  # each method in one concern


@pytest.mark.parametrize("backend", [SqliteIndex, PostgresIndex])
@pytest.mark.parametrize("protocol", CONCERNS, ids=lambda p: p.__name__)
def test_backends_implement_each_concern(backend, protocol):
    for name, wanted in methods(protocol).items():
        found = getattr(backend, name, None)
        assert found is not None, f"{backend.__name__} has no {name}"
        assert inspect.iscoroutinefunction(found) == inspect.iscoroutinefunction(
            getattr(protocol, name)
        ), name
        assert list(inspect.signature(found).parameters) == list(wanted.parameters), name
    for name in vars(protocol).get("__annotations__", {}):  # attributes (``shared``)
        assert hasattr(backend, name), f"{backend.__name__} has no {name}"


ROOT = Path(dicomhub.__file__).parent


def imports(*packages: str) -> Iterator[tuple[Path, list[str]]]:
    """Each module of ``packages`` and what one import statement of it imports (a ``from``
    import both as the module and as module.name)."""
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module:
                    yield path, [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                elif isinstance(node, ast.Import):
                    yield path, [a.name for a in node.names]


def test_the_archive_sees_storage_only_through_its_protocols():
    for path, modules in imports("archive", "workers", "web", "dimse", "fhir"):
        for module in modules:
            if module.startswith("dicomhub.storage."):
                assert module.startswith("dicomhub.storage.protocols"), (path, module)


# What only the composition root (cli.py) builds: external clients and process pools.
BUILT_BY_THE_ROOT = {"FhirClient", "Auth", "AsyncClient", "ProcessConverter", "ProcessPoolExecutor"}
POOLS_AND_CLIENTS = ("multiprocessing", "concurrent.futures", "httpx")


def test_the_archive_builds_no_client_and_no_pool():
    """archive/ receives its FHIR sync and its conversion pool; it neither builds them nor
    imports what builds them (the FHIR client module only for its types and error)."""
    for path in (ROOT / "archive").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                assert name not in BUILT_BY_THE_ROOT, (path, node.lineno, name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith(POOLS_AND_CLIENTS), (path, alias.name)
            elif isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(POOLS_AND_CLIENTS), (path, node.module)
                if node.module == "dicomhub.fhir.client":
                    names = {alias.name for alias in node.names}
                    assert names <= {"FhirClient", "FhirError"}, (path, names)


def test_services_get_their_settings_group_not_the_whole():
    """Every layer is handed its group of the settings (settings_groups.py), never the whole
    Settings: only the composition root sees it, and the web app that splits it among its
    middleware."""
    packages = ("archive", "storage", "dimse", "workers", "fhir", "dicom", "web")
    for path, modules in imports(*packages):
        if path != ROOT / "web" / "app.py":
            assert "dicomhub.settings" not in modules, path
