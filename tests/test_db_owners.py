"""Process identity: judged alive or dead only where a pid means something (same host, boot and
pid namespace), by pid and start time, so a reused pid is not the process that wrote a row."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from dicom_chain.db import owners


def test_this_process_is_alive_and_reads_back_from_its_text():
    me = owners.current()
    assert me.pid == os.getpid() and me.started == owners.start_time(os.getpid()) > 0
    assert owners.Owner.parse(str(me)) == me
    assert owners.alive(me) is True and not owners.dead(me)


def test_an_exited_process_is_dead():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    gone = replace(owners.current(), pid=child.pid, started=1)
    assert owners.alive(gone) is False and owners.dead(gone)


def test_a_reused_pid_with_another_start_time_is_dead():
    me = owners.current()
    assert owners.dead(replace(me, started=me.started + 1))  # our pid, an earlier process's start
    parent = os.getppid()  # a living process, but not the one that started at that time
    assert owners.alive(replace(me, pid=parent, started=owners.start_time(parent))) is True
    assert owners.dead(replace(me, pid=parent, started=owners.start_time(parent) + 1))


def test_another_host_or_boot_cannot_be_judged():
    me = owners.current()
    assert owners.alive(replace(me, host="elsewhere", pid=999_999_999)) is None
    assert owners.alive(replace(me, boot="0" * 16, pid=999_999_999)) is None
    assert not owners.dead(replace(me, host="elsewhere", pid=999_999_999))


def test_texts_that_are_not_owners_parse_to_none():
    for text in ("", "host:1234", "host:boot:pid:start", "a:b:1:x"):
        assert owners.Owner.parse(text) is None


def _child_owner(queue: multiprocessing.Queue) -> None:
    queue.put(str(owners.current()))


def test_a_forked_child_names_itself_not_its_parent():
    parent = owners.current()  # computed (and cached) before the fork
    queue = multiprocessing.get_context("fork").Queue()
    child = multiprocessing.get_context("fork").Process(target=_child_owner, args=(queue,))
    child.start()
    text = queue.get(timeout=30)
    child.join(30)
    named = owners.Owner.parse(text)
    assert named is not None and named.pid == child.pid != parent.pid
    assert (named.host, named.boot) == (parent.host, parent.boot) and named.started != 0
    assert owners.dead(named)  # it has exited
    assert owners.current() == parent


def test_a_killed_child_not_yet_reaped_is_dead():
    """A zombie keeps its pid and /proc entry until its parent reaps it (serve reaps its forward
    process only when it stops): killed with -9, it runs no more and its leases must come back."""
    import signal
    import time

    child = subprocess.Popen(["sleep", "600"])
    try:
        owner = replace(owners.current(), pid=child.pid, started=owners.start_time(child.pid) or 0)
        assert owners.alive(owner) is True
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        stat = Path(f"/proc/{child.pid}/stat")
        while b") Z" not in stat.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert owners.alive(owner) is False  # a zombie: not reaped, yet dead
    finally:
        child.kill()
        child.wait()
