"""The one SQLite writer of ``serve --workers N`` (storage/sqlite_writer.py): errors cross the
socket as the domain errors they are, a missing writer is Unavailable (503), not a hang, and
nobody but the server's own user may connect (the frames are pickles: an accepted one runs).
The IndexStore contract through the writer is in test_index_contract.py ("sqlite-writer")."""

from __future__ import annotations

import asyncio
import os
import pickle
import socket
import sqlite3
import time

import pytest

from dicomhub.errors import AlreadyExists, Unavailable
from dicomhub.model import Scope
from dicomhub.storage import instance_ops
from dicomhub.storage import statements as st
from dicomhub.storage.sqlite_writer import WriterService, _frame
from dicomhub.storage.urls import open_index
from tests.synthetic import instance, uid
from tests.test_index_contract import _commit_mode, new_instance


@pytest.fixture
def writer(tmp_path):
    url = f"sqlite://{tmp_path / 'index.sqlite'}"
    service = WriterService(lambda: open_index(url))
    service.start()
    yield url, service
    service.stop()


def test_errors_cross_as_domain_errors(writer):
    url, service = writer
    item = new_instance(instance(uid(1), uid(1, 1), uid(1, 1, 1)))

    async def run():
        index = open_index(url, sqlite_writer=service.address)
        await index.start()
        try:
            first, second = await index.reserve_versions(item.id.partition, 2)
            await index.commit(first, item)
            with pytest.raises(AlreadyExists):
                await index.commit(second, item)
            assert await index.abandon(second) is True
            with pytest.raises(Unavailable) as gone:  # the upload row is gone: abandoned
                await index.commit(second, item)
            return gone.value
        finally:
            await index.close()

    error = asyncio.run(run())
    assert error.dependency == "index" and "abandoned" in str(error)


def test_a_missing_writer_is_unavailable(writer):
    url, service = writer
    service.stop()

    async def run():
        index = open_index(url, sqlite_writer=service.address)
        await index.start()
        try:
            with pytest.raises(Unavailable, match="index writer"):
                await index.reserve_versions("Microsoft.Default", 1)
        finally:
            await index.close()

    asyncio.run(run())


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to connect as another user")
def test_another_user_is_refused(writer):
    url, service = writer
    os.chmod(os.path.dirname(service.address), 0o755)  # let the other user reach the socket
    os.chmod(service.address, 0o777)
    pid = os.fork()
    if pid == 0:  # the child, as nobody: sends a frame, must get no answer but a hang-up
        code = 1
        try:
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(10)
                s.connect(service.address)
                try:
                    # a well-formed request, which the writer would run for its own user
                    s.sendall(_frame((0, instance_ops.reserve_versions, ("Microsoft.Default", 1))))
                    code = 0 if s.recv(1) == b"" else 2
                except ConnectionError:  # hung up already
                    code = 0
        except BaseException as exc:  # reported by the parent's assertion
            os.write(2, f"child: {exc!r}\n".encode())
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0

    async def still_serving():  # and the writer still serves its own user
        index = open_index(url, sqlite_writer=service.address)
        await index.start()
        try:
            return await index.reserve_versions("Microsoft.Default", 3)
        finally:
            await index.close()

    # the refused request reserved nothing: the first versions are the ones reserved here
    assert asyncio.run(still_serving()) == [1, 2, 3]


def _a_row():
    return (yield st.one("SELECT 1"))  # a sqlite3.Row, which does not pickle


def test_a_result_that_cannot_cross_is_an_error(writer):
    """An operation whose result cannot be sent back fails its caller (it used to leave it
    waiting for ever); the connection goes on serving."""
    url, service = writer

    async def run():
        index = open_index(url, sqlite_writer=service.address)
        await index.start()
        try:
            with pytest.raises(TypeError, match="pickle"):
                await asyncio.wait_for(index._write(_a_row), 30)
            return await index._write(_commit_mode, "PRAGMA synchronous")
        finally:
            await index.close()

    assert asyncio.run(run()) == 2  # FULL


def test_a_bad_frame_ends_its_connection_only(writer):
    """Bytes that are not a call end the connection that sent them; the writer goes on
    serving the others, and calls sent together on two connections are all answered."""
    url, service = writer
    with socket.socket(socket.AF_UNIX) as bad:
        bad.settimeout(10)
        bad.connect(service.address)
        bad.sendall(len(b"not a pickle").to_bytes(4, "big") + b"not a pickle")
        assert bad.recv(1) == b""  # hung up

    async def run():
        indexes = [open_index(url, sqlite_writer=service.address) for _ in range(2)]
        for index in indexes:
            await index.start()
        try:
            calls = [i.reserve_versions("Microsoft.Default", 2) for i in indexes for _ in range(3)]
            return await asyncio.gather(*calls)
        finally:
            for index in indexes:
                await index.close()

    versions = [v for block in asyncio.run(run()) for v in block]
    assert sorted(versions) == list(range(1, 13))  # each reserved once, none lost


def test_answers_larger_than_the_socket_takes_all_arrive(writer):
    """A peer that sends many calls before reading gets every answer once it reads, even when
    they are more than its socket holds (the writer keeps the rest until it can send)."""
    _, service = writer
    calls, block = 60, 5000  # each answer about 15 KB: about 900 KB in all
    with socket.socket(socket.AF_UNIX) as peer:
        peer.settimeout(60)
        peer.connect(service.address)
        for number in range(calls):
            args = ("Microsoft.Default", block)
            peer.sendall(_frame((number, instance_ops.reserve_versions, args)))
        time.sleep(1)  # the writer has run them and filled the socket before anything is read
        received, answers = bytearray(), {}
        while len(answers) < calls:
            chunk = peer.recv(65536)
            assert chunk, "the writer hung up"
            received += chunk
            while len(received) >= 4:
                size = int.from_bytes(received[:4], "big")
                if len(received) < 4 + size:
                    break
                number, ok, value = pickle.loads(received[4 : 4 + size])
                del received[: 4 + size]
                assert ok, value
                answers[number] = value
    versions = [v for number in range(calls) for v in answers[number]]
    assert sorted(versions) == list(range(1, calls * block + 1))


@pytest.mark.parametrize("through_service", [False, True], ids=["in-process", "service"])
def test_a_call_that_does_not_fit_fails_alone(writer, through_service):
    """A write operation called with the wrong arguments fails its caller with the error;
    the writer (the index's own thread, or the service) goes on serving the others."""
    url, service = writer

    async def run():
        index = open_index(url, sqlite_writer=service.address if through_service else None)
        await index.start()
        partition = "Microsoft.Default"
        try:
            wrong = index._write(instance_ops.reserve_versions, partition)
            right = index.reserve_versions(partition, 2)
            outcomes = await asyncio.wait_for(  # a writer that died would leave them waiting
                asyncio.gather(wrong, right, return_exceptions=True), 60
            )
            return outcomes, await asyncio.wait_for(index.reserve_versions(partition, 1), 60)
        finally:
            await index.close()

    (wrong, right), after = asyncio.run(run())
    assert isinstance(wrong, TypeError) and "count" in str(wrong)
    assert len(right) == 2 and len(after) == 1


@pytest.mark.parametrize("through_service", [False, True], ids=["in-process", "service"])
def test_reads_never_take_the_write_lock(writer, through_service):
    """A process that reads, as every server process and the background one do, never takes
    the file's write lock, not even to load the writer's new planner statistics: the
    background process runs at idle priority and may be starved or stopped at any moment,
    and the writer must never wait for it. Here another connection holds the write lock for
    the whole of the reads (a read that wanted it would fail, Unavailable, after the busy
    timeout)."""
    url, service = writer
    item = new_instance(instance(uid(94), uid(94, 1), uid(94, 1, 1)))

    async def run():
        index = open_index(url, sqlite_writer=service.address if through_service else None)
        await index.start()
        try:
            (version,) = await index.reserve_versions(item.id.partition, 1)
            await index.commit(version, item)
            holder = sqlite3.connect(url.removeprefix("sqlite://"), isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")
            try:
                return await index.instances(Scope(item.id.study))
            finally:
                holder.execute("ROLLBACK")
                holder.close()
        finally:
            await index.close()

    (found,) = asyncio.run(run())
    assert found.id == item.id
