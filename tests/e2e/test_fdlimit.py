"""Running out of file descriptors, made cheap and deterministic: lbd runs
under a small fd limit (RLIMIT_NOFILE 256, as `prlimit --nofile=256:256`)
and the tests open more connections than it can hold.

A worker at max_connections stops accepting (the kernel's backlog holds
new clients) instead of spinning on accept() and flooding the log, keeps
an fd for the backend connection of every connection it holds, and
accepts again once connections close. The admin listener is capped and
deadlined so that a flood of it cannot starve the health checks of the
same process. CPU is measured from /proc/PID/stat with a generous bound
(under half of the wall time): a behaviour check that separates a busy
loop (100 %) from a paused listener (about 0), not a timing assertion."""
import os
import re
import resource
import select
import socket
import time

from lbdtest import (HttpConn, LbdTestCase, connect, free_port, lbd_config, parse_status,
                     recv_until_eof, split_hostport, wait_for)
from lbdextra import admin_get, find_server, run_requests, tally

NOFILE = (256, 256)
HEALTH = {"path": "/healthz", "interval": "100ms", "timeout": "500ms", "rise": 2, "fall": 2}


def cpu_seconds(pid):
    """User + system CPU time of PID so far, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_share(pid, seconds=3.0):
    """The share of one core PID used over SECONDS of wall time."""
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - c0) / (time.monotonic() - t0)


def open_many(addr, n):
    """N connections to ADDR, connects not waited for (the kernel completes
    them into the listen backlog, or retries the SYN while it is full)."""
    host, port = split_hostport(addr)
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex((host, port))
        socks.append(s)
    return socks


def close_all(socks):
    for s in socks:
        s.close()
    socks.clear()


def settled(probe, what, at_least, timeout=20.0):
    """PROBE's value once it is AT_LEAST and two reads half a second apart
    agree."""
    wait_for(lambda: probe() >= at_least, timeout, what=what)
    last = [None]

    def same():
        v = probe()
        ok = v == last[0]
        last[0] = v
        return (v,) if ok else None
    return wait_for(same, timeout, interval=0.5, what=what)[0]


class FdLimitTest(LbdTestCase):

    def _cfg(self, listen, backends, keepalive=None, health=None, admin=None, admin_keys=None,
             workers=1, top=""):
        pool = {"name": "web", "servers": [(b.addr, 1) for b in backends]}
        if keepalive is not None:
            pool["keepalive"] = keepalive
        if health is not None:
            pool["health_check"] = health
        extra = top
        if admin is not None:
            keys = "".join(f' {k} = "{v}";' if isinstance(v, str) else f" {k} = {v};"
                           for k, v in (admin_keys or {}).items())
            extra += f'\nadmin = {{ address = "{admin}";{keys} }};'
        # defer_accept off: a connection reaches accept() without sending.
        return lbd_config(listen, [pool], workers=workers, extra=extra,
                          listener={"defer_accept": False})

    def _lbd(self, backends, workers=1, nofile=NOFILE, **kw):
        listen = f"127.0.0.1:{free_port()}"
        cfg = self._cfg(listen, backends, workers=workers, **kw)
        return self.start_lbd(cfg, listen, workers=workers, nofile=nofile)

    def _worker(self, lbd):
        (w,) = lbd.running_workers()
        return w

    def _flood(self, addr, n):
        if not hasattr(self, "_floods"):
            self._floods = []
            self.addCleanup(self._close_floods)
        socks = open_many(addr, n)
        self._floods.append(socks)
        return socks

    def _close_floods(self):
        for socks in getattr(self, "_floods", []):
            close_all(socks)

    def test_worker_at_its_cap_pauses_serves_what_it_holds_and_recovers(self):
        """Started with a soft fd limit of 128, lbd raises it to the hard
        256; a worker computes its cap from that (logged at start, shown
        by lbd -s); 400 connections more than it can hold: it holds exactly
        max_connections, logs at most a line a second, uses next to no CPU,
        still serves the keep-alive connections it held before (keepalive
        0: each request needs a new backend fd, the reserve), and once the
        extra connections close it accepts and serves new ones."""
        b = self.start_backend("b1")
        lbd = self._lbd([b], keepalive=0, nofile=(128, 256))
        m = lbd.wait_log(r"fd limit 256 \(raised from 128\); per worker: (\d+) client connections")
        cap = int(m.group(1))
        w = self._worker(lbd)
        self.assertEqual(w["max_connections"], cap)
        self.assertEqual(lbd.snapshot()["fd_limit"], 256)
        self.assertLess(cap, 128, "two fds per connection fit in 256")

        held = [HttpConn(lbd.listen) for _ in range(5)]
        self.addCleanup(lambda: [c.close() for c in held])
        for c in held:
            self.assertEqual(c.request("/").status, 200)

        self._flood(lbd.listen, 400)
        active = settled(lambda: self._worker(lbd)["active_connections"],
                         "the worker to stop taking connections", cap)
        self.assertEqual(active, cap, "the worker holds exactly max_connections")
        off = lbd.log_size()
        share = cpu_share(w["pid"])
        self.assertLess(share, 0.5, f"worker CPU {share:.0%} while saturated: a busy loop")
        for c in held:
            r = c.request("/")
            self.assertEqual(r.status, 200, "a held connection is served: its backend fd was kept")
        lines = lbd.log_since(off).splitlines()
        self.assertLessEqual(len(lines), 8, "at most a line a second:\n" + "\n".join(lines[:20]))
        w = self._worker(lbd)
        self.assertGreaterEqual(w["accept_pauses"]["cap"], 1)
        self.assertEqual(w["accept_pauses"]["fd"], 0, "the cap left accept() nothing to fail on")

        # The extra connections go; new ones are accepted and served.
        self._close_floods()
        wait_for(lambda: self._worker(lbd)["active_connections"] == len(held), 20,
                 what="the extra connections to close")
        for _ in range(3):
            self.assertEqual(self.get("/").status, 200)
        snap = lbd.snapshot()
        self.assertGreaterEqual(snap["totals"]["accept_pauses"]["cap"], 1)
        self.assertRegex(lbd.log(), r"max_connections \(\d+\) reached")

    def test_idle_backend_connections_give_way_to_clients(self):
        """Idle pooled connections live on the fds clients leave: pool a
        keeps as many idle connections as the budget allows, then
        max_connections clients each need a new connection to pool b at
        once. Idle connections of a are closed to make room, and every
        request gets 200 (without that, about 50 would find no fd: 502)."""
        ba, bb = self.start_backends("a", "b")
        listen = f"127.0.0.1:{free_port()}"
        pools = [{"name": "a", "keepalive": 1000, "servers": [(ba.addr, 1)]},
                 {"name": "b", "servers": [(bb.addr, 1)]}]
        cfg = lbd_config(listen, pools, routes=[("*", "/a", "a"), ("*", "/b", "b")], workers=1,
                         listener={"defer_accept": False},
                         timeouts={"backend_idle": "1h", "backend_response": "20s"})
        lbd = self.start_lbd(cfg, listen, workers=1, nofile=NOFILE)
        m = lbd.wait_log(r"per worker: (\d+) client connections .* in what they leave "
                         r"\(at most (\d+)\)")
        cap, idle = int(m.group(1)), int(m.group(2))

        def in_flight(target, n):
            conns = [HttpConn(lbd.listen, timeout=30) for _ in range(n)]
            try:
                for c in conns:
                    c.send(f"GET {target} HTTP/1.1\r\nHost: lbd.test\r\n\r\n".encode())
                return [c.read_response().status for c in conns]
            finally:
                for c in conns:
                    c.close()
        self.assertEqual(set(in_flight("/a?delay=300", idle)), {200})
        wait_for(lambda: ba.stats()["active"] == idle + 1, 10,
                 what=f"{idle} idle connections to pool a")
        wait_for(lambda: self._worker(lbd)["active_connections"] == 0, 10,
                 what="the warm-up clients to go")
        statuses = in_flight("/b?delay=300", cap)
        self.assertEqual([s for s in statuses if s != 200], [], "every client found an fd")
        self.assertLess(ba.stats()["active"], idle + 1, "idle connections of a were closed")
        self.assertNotRegex(lbd.log(), r"socket\(\) for .* failed")

    def test_configured_max_connections(self):
        """max_connections = 10: the worker holds 10 connections of 30. A
        reload to more than 256 fds allow: lowered to what fits, with a
        warning, and the new worker holds that many."""
        b = self.start_backend("b1")
        lbd = self._lbd([b], top="max_connections = 10;")
        self.assertEqual(self._worker(lbd)["max_connections"], 10)
        self._flood(lbd.listen, 30)
        active = settled(lambda: self._worker(lbd)["active_connections"],
                         "the worker to stop taking connections", 10)
        self.assertEqual(active, 10)
        self._close_floods()
        wait_for(lambda: self._worker(lbd)["active_connections"] == 0, 20,
                 what="the connections to close")

        off = lbd.log_size()
        lbd.reload(self._cfg(lbd.listen, [b], top="max_connections = 100000;"))
        m = lbd.wait_log(r"max_connections 100000 does not fit in the fd limit 256: (\d+) "
                         r"per worker", since=off)
        fits = int(m.group(1))
        self.assertLess(fits, 128)
        wait_for(lambda: [w["max_connections"] for w in lbd.running_workers()] == [fits], 10,
                 what="the new worker to run with the lowered cap")
        self.assertEqual(self.get("/").status, 200)

    def test_accept_failing_for_lack_of_fds_pauses_then_resumes(self):
        """accept() failing with EMFILE (the worker's soft limit lowered
        under its feet with prlimit, so that its cap no longer fits): the
        worker pauses accepting, retries every 500 ms, logs at most a line
        a second with a count, uses next to no CPU, and once the limit is
        back every waiting connection is accepted and answered."""
        b = self.start_backend("b1")
        lbd = self._lbd([b])
        w = self._worker(lbd)
        pid = w["pid"]
        nfds = len(os.listdir(f"/proc/{pid}/fd"))
        try:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (nfds + 10, NOFILE[1]))
        except OSError as e:
            self.skipTest(f"prlimit on the worker: {e}")
        self.addCleanup(lambda: resource.prlimit(pid, resource.RLIMIT_NOFILE, NOFILE)
                        if os.path.exists(f"/proc/{pid}") else None)
        conns = []
        self.addCleanup(lambda: [c.close() for c in conns])
        for _ in range(40):
            c = HttpConn(lbd.listen)
            c.send(b"GET / HTTP/1.1\r\nHost: lbd.test\r\n\r\n")
            conns.append(c)
        wait_for(lambda: self._worker(lbd)["accept_pauses"]["fd"] >= 1, 10,
                 what="accept() to fail and the listener to pause")
        off = lbd.log_size()
        share = cpu_share(pid)
        self.assertLess(share, 0.5, f"worker CPU {share:.0%} while out of fds: a busy loop")
        lines = lbd.log_since(off).splitlines()
        failed = [ln for ln in lines if "accept() failed" in ln]
        self.assertLessEqual(len(failed), 5, "at most a line a second:\n" + "\n".join(lines[:20]))
        self.assertGreaterEqual(self._worker(lbd)["accept_pauses"]["fd"], 3,
                                "retried every 500 ms while the fds lacked")
        self.assertRegex(lbd.log(), r"accept\(\) failed \(24: [^)]*\): not accepting for 500 ms "
                                    r"\(\d+ time\(s\) since the last such line\)")

        resource.prlimit(pid, resource.RLIMIT_NOFILE, NOFILE)
        # Those accepted while fds were short may have found none for their
        # backend (502); every connection gets its answer, the waiting ones 200.
        statuses = [c.read_response().status for c in conns]
        self.assertEqual([s for s in statuses if s not in (200, 502)], [], statuses)
        self.assertGreaterEqual(statuses.count(200), 20, statuses)
        for _ in range(3):
            self.assertEqual(self.get("/").status, 200)
        self.assertEqual(self._worker(lbd)["pid"], pid, "no restart needed")

    # -- the admin listener ----------------------------------------------------------

    def test_admin_flood_changes_no_health_check(self):
        """600 connections to the admin port of an lbd limited to 256 fds:
        the control process holds admin.max_connections (64) of them, its
        health checks go on passing (ok counters rise, none fails, no server
        goes DOWN) and proxied requests get 200 all along; once the flood
        ends /status answers again."""
        bs = self.start_backends("b1", "b2", "b3")
        admin = f"127.0.0.1:{free_port()}"
        lbd = self._lbd(bs, health=HEALTH, admin=admin)

        def servers():
            return {s["address"]: s for s in lbd.snapshot()["pools"][0]["servers"]}
        wait_for(lambda: all(s["checks"]["ok"] >= 1 for s in servers().values()), 10,
                 what="a passed check on every server")
        self._flood(admin, 600)
        wait_for(lambda: lbd.snapshot()["admin"]["connections"] == 64, 10,
                 what="the admin listener to fill up to its cap")
        before = {a: s["checks"]["ok"] for a, s in servers().items()}
        # lbd -s reads shared memory through the master: the admin port is full.
        wait_for(lambda: all(s["checks"]["ok"] >= before[a] + 10 for a, s in servers().items()),
                 20, what="ten more passed checks on every server during the flood")
        per, bad = tally(run_requests(lbd.listen, [("/", ())] * 30, nthreads=3))
        self.assertEqual(bad, [], "proxied requests during the admin flood")
        snap = lbd.snapshot()
        for s in snap["pools"][0]["servers"]:
            self.assertEqual((s["health"], s["checks"]["failed"]), ("up", 0), s)
        self.assertEqual(snap["admin"]["max_connections"], 64)
        self.assertLessEqual(snap["admin"]["connections"], 64)
        self.assertGreaterEqual(snap["admin"]["accept_pauses"]["cap"], 1)
        self.assertEqual(snap["admin"]["accept_pauses"]["fd"], 0)
        self.assertNotRegex(lbd.log(), r"skipped|is DOWN|socket\(\) failed")

        self._close_floods()
        wait_for(lambda: admin_get(admin, "/status", timeout=2).status == 200, 20,
                 what="/status to answer once the flood is over")

    def test_admin_head_deadline_counts_from_accept(self):
        """admin.timeout is one deadline for the whole request head, not
        restarted by each byte: a client sending a byte every 200 ms gets
        408 (timeout 1s) long before its 70-byte head is complete."""
        b = self.start_backend("b1")
        admin = f"127.0.0.1:{free_port()}"
        lbd = self._lbd([b], admin=admin, admin_keys={"timeout": "1s"})
        head = b"GET /status HTTP/1.1\r\nHost: admin.test\r\nUser-Agent: one-byte-at-a-time\r\n\r\n"
        s = connect(admin)
        self.addCleanup(s.close)
        sent, got = 0, b""
        for i in range(len(head)):
            try:
                s.send(head[i:i + 1])
            except OSError:
                break
            sent += 1
            if select.select([s], [], [], 0.2)[0]:
                got = recv_until_eof(s)
                break
        self.assertEqual(parse_status(got), 408, got[:200])
        self.assertLess(sent, len(head), "cut before the head was complete")
        self.assertEqual(lbd.snapshot()["admin"]["timeouts"], 1)

    def test_admin_answers_survive_unread_input(self):
        """An oversized head (100 KB), garbage and a pipelined flood each get
        their answer whole, then our FIN: lbd reads and drops what it does
        not use instead of closing with unread bytes (a reset that would
        destroy the answer)."""
        b = self.start_backend("b1")
        admin = f"127.0.0.1:{free_port()}"
        self._lbd([b], admin=admin)
        big = b"GET /status HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 100000 + b"\r\n\r\n"
        garbage = b"\x01\x02 nonsense\r\n\r\n" + b"z" * 100000
        piped = b"GET /status HTTP/1.1\r\nHost: a\r\n\r\n" * 3000
        for name, payload, status in (("100 KB head", big, 431), ("garbage", garbage, 400),
                                      ("pipelined", piped, 200)):
            with HttpConn(admin) as c:
                c.send(payload)
                try:
                    data = c.read_until_eof()
                except ConnectionResetError as e:
                    self.fail(f"{name}: the answer was destroyed by a reset ({e})")
            self.assertEqual(parse_status(data), status, f"{name}: {data[:200]!r}")
            self.assertIn(b"Connection: close", data)
