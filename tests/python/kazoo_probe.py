"""What a kazoo user does first, against the server given on the command line:
a lock under contention, an election, a DataWatch and ChildrenWatch, a
transaction, ephemeral nodes and sequence numbers. Prints "OK <check>" per
check and "ALL OK" at the end; any failure raises and exits non-zero."""

import sys
import threading
import time

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError


def check(ok, what):
    if not ok:
        raise AssertionError(what)
    print("OK", what, flush=True)


def wait_for(pred, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("timed out: " + what)
        time.sleep(0.02)
    print("OK", what, flush=True)


def main(hosts, root):
    zk = KazooClient(hosts=hosts, timeout=10.0)
    zk.start(timeout=10)
    check(zk.connected, "connected")

    # Lock: 4 threads x 25 increments of a plain counter.
    counter = [0]
    inside = [0]
    errors = []

    def worker():
        lock = zk.Lock(root + "/lock")
        for _ in range(25):
            with lock:
                inside[0] += 1
                if inside[0] != 1:
                    errors.append("two holders")
                v = counter[0]
                time.sleep(0)
                counter[0] = v + 1
                inside[0] -= 1

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    check(not errors and counter[0] == 100, "lock: 100 increments, one holder at a time")

    # Election: the first contender leads; when it returns, the second does.
    led = []
    first_may_end = threading.Event()

    def lead(name):
        led.append(name)
        if name == "a":
            first_may_end.wait(10)

    ea = zk.Election(root + "/election", "a")
    ta = threading.Thread(target=ea.run, args=(lead, "a"))
    ta.start()
    wait_for(lambda: led == ["a"], "election: first contender leads")
    eb = zk.Election(root + "/election", "b")
    tb = threading.Thread(target=eb.run, args=(lead, "b"))
    tb.start()
    time.sleep(0.2)
    check(led == ["a"], "election: second contender waits")
    check(sorted(ea.contenders()) == ["a", "b"], "election: contenders are visible")
    first_may_end.set()
    wait_for(lambda: led == ["a", "b"], "election: handover")
    ta.join(10)
    tb.join(10)

    # DataWatch sees every settled value, ChildrenWatch the membership.
    zk.ensure_path(root + "/cfg")
    seen = []
    zk.DataWatch(root + "/cfg", lambda data, stat: seen.append(data))
    zk.set(root + "/cfg", b"v1")
    wait_for(lambda: seen and seen[-1] == b"v1", "DataWatch sees the change")
    members = []
    zk.ensure_path(root + "/members")
    zk.ChildrenWatch(root + "/members", lambda ch: members.append(sorted(ch)))
    zk.create(root + "/members/m", b"", ephemeral=True, sequence=True)
    wait_for(lambda: members and len(members[-1]) == 1, "ChildrenWatch sees a member join")
    check(members[-1][0] == "m0000000000", "sequence numbers are %010d")

    # A transaction is all or nothing.
    tx = zk.transaction()
    tx.create(root + "/t1", b"")
    tx.delete(root + "/missing")
    results = tx.commit()
    check(isinstance(results[1], NoNodeError), "transaction reports the failing op")
    check(zk.exists(root + "/t1") is None, "failed transaction left nothing")

    zk.delete(root, recursive=True)
    zk.stop()
    zk.close()
    print("ALL OK", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
