"""Ids: the format, no repeats across threads, buffer refills and a fork."""

from __future__ import annotations

import os
import re
import threading

from relay.ids import looks_like, new_id, random_hex


def test_the_format_and_no_repeats_across_buffer_refills():
    ids = [new_id("msg") for _ in range(5000)]  # 30 KB of randomness: several refills
    assert all(re.fullmatch(r"msg_[0-9a-f]{24}", i) and looks_like("msg", i) for i in ids)
    assert len(set(ids)) == len(ids)
    assert len(random_hex(16)) == 32 and len(random_hex(5000)) == 10000


def test_threads_do_not_share_random_bytes():
    found: list[list[str]] = [[] for _ in range(4)]

    def make(out: list[str]) -> None:
        out.extend(random_hex(6) for _ in range(2000))

    threads = [threading.Thread(target=make, args=(out,)) for out in found]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [x for out in found for x in out]
    assert len(set(every)) == len(every)


def test_a_forked_child_does_not_repeat_its_parents_next_bytes():
    random_hex(1)  # the parent has a buffer with bytes left in it
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it would use next, and leave at once
        os.write(write, random_hex(16).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    assert len(child) == 32 and child != random_hex(16)
