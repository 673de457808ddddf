"""Shared fixtures: real test files from pydicom, synthetic studies, nodes on SQLite and PostgreSQL."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_chain.config import Settings
from dicom_chain.node import Node
from dicom_chain.synthetic import StudySpec, ct_study

from .peers import PostgresServer

# pydicom's bundled third-party files, opened by path (get_testdata_file may try the network).
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
MALFORMED = Path(__file__).parent / "malformed"
SAMPLE_STUDY = Path(__file__).parent.parent / "sample_data" / "ct-demo"


def pydicom_file(name: str) -> Path:
    path = TEST_FILES / name
    assert path.is_file(), f"pydicom no longer ships {name}"
    return path


def read(name: str) -> Dataset:
    return pydicom.dcmread(pydicom_file(name))


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer.start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on SQLite and on a real PostgreSQL server (a fresh database each time)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "node", institution="Test Hospital")


@pytest.fixture
def node(settings: Settings) -> Iterator[Node]:
    n = Node.open(settings)
    yield n
    n.close()


@pytest.fixture(scope="session")
def small_study() -> list[Dataset]:
    return list(ct_study(StudySpec(seed=7, instances=6, rows=16, columns=16)))


def fresh(ds: Dataset) -> Dataset:
    return copy.deepcopy(ds)


@pytest.fixture
def orthanc():
    from .peers import OrthancServer

    server = OrthancServer.create().start()
    yield server
    server.destroy()


# Debian's DCMTK (and Orthanc on it) keep Nagle's algorithm on unless this is set: every C-STORE
# would then wait ~45 ms for a delayed ACK (measured: storescu -> storescp 22 -> 347 instances/s).
# Real peers in tests run with it.
os.environ.setdefault("TCP_NODELAY", "1")


@pytest.fixture
def make_gateway(node: Node) -> Iterator:
    """Gateways on the test's node, each on a free loopback port with the settings given; all
    stopped at the end of the test."""
    from dataclasses import replace

    from scp.server import Gateway

    from .peers import free_port

    gateways: list[Gateway] = []

    def make(**settings: object) -> Gateway:
        gateway = Gateway(node, replace(node.settings, host="127.0.0.1", port=free_port(), **settings))
        gateway.start()
        gateways.append(gateway)
        return gateway

    yield make
    for gateway in gateways:
        gateway.stop()
