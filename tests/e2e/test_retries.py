"""Retries: a try that failed before any byte of its answer reached the
client is sent again, to another server when the pool has one, after a
full-jitter backoff on a timer, within a budget counted over all workers.
Real backends made to fail through the test backend's GET /control; what
reached each backend is counted there (GET /stats "heads"), what lbd did in
/metrics, lbd -s and the access log. Counts, no timing assertions."""
import re
import socket
import subprocess
import threading

from lbdtest import (HttpConn, LbdTestCase, RawServer, connect, free_port, pattern_body,
                     recv_until_eof, wait_for)
from lbdextra import (Load, admin_metrics, admin_status, ext_config, find_server, kill_backend,
                      run_requests, tally)
from test_limits import Held
from test_regressions import RawBackend


def heads(b):
    return b.stats()["heads"]


def fnv1a64(data):
    h = 0xcbf29ce484222325
    for c in data:
        h = ((h ^ c) * 0x100000001b3) & 0xffffffffffffffff
    return "%016x" % h


class CutServer(RawServer):
    """A backend that answers every request with PREFIX (bytes: part of a
    response) and then resets the connection. Counts requests."""

    def __init__(self, prefix):
        self.prefix = prefix
        self.requests = 0
        super().__init__()

    def _serve(self, c):
        with c:
            if self.read_head(c, b"") is None:
                return
            with self.lock:
                self.requests += 1
            c.sendall(self.prefix)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    def count(self):
        with self.lock:
            return self.requests


class RetryTest(LbdTestCase):

    def _lbd(self, pools, routes=None, workers=4, access_log=False, timeouts=None):
        listen = f"127.0.0.1:{free_port()}"
        self.admin = f"127.0.0.1:{free_port()}"
        self.access = self.path("access.log") if access_log else None
        extra = f'access_log = "{self.access}";' if access_log else ""
        cfg = ext_config(listen, pools, routes=routes, workers=workers, admin=self.admin,
                         extra=extra, timeouts=timeouts)
        return self.start_lbd(cfg, listen, workers=workers)

    def _pool(self, backends, retries, **kw):
        return dict({"name": "web", "servers": [(b.addr, 1) for b in backends],
                     "retries": retries}, **kw)

    def retries(self, reason=None, pool="web"):
        m = admin_metrics(self.admin)
        if reason is None:
            return m.sum("lbd_retries_total", pool=pool)
        return m.value("lbd_retries_total", pool=pool, reason=reason)

    def exhausted(self, pool="web"):
        return admin_metrics(self.admin).value("lbd_retry_budget_exhausted_total", pool=pool)

    def pool_snapshot(self, lbd, name="web"):
        return next(p for p in lbd.snapshot()["pools"] if p["name"] == name)

    def attempts(self, n):
        """The attempts=N of the access log's first N lines."""
        def probe():
            with open(self.access) as f:
                ls = f.read().splitlines()
            return ls if len(ls) >= n else None
        lines = wait_for(probe, 10, what=f"{n} access log lines")
        return [int(re.search(r" attempts=(\d+)$", ln).group(1)) for ln in lines]

    def test_get_retried_to_another_server(self):
        """One of three servers answers 503, then resets, then is down:
        every GET succeeds (4 workers, 4 clients). Each 503 it gave was
        retried once, on another server (counted at the backends, in
        lbd_retries_total and as attempts=2 in the access log)."""
        b1, b2, b3 = self.start_backends("b1", "b2", "b3")
        lbd = self._lbd([self._pool((b1, b2, b3), {"attempts": 3, "min_retries": 50})],
                        access_log=True)
        b2.control("status=503")
        got = run_requests(lbd.listen, [("/", [])] * 150, nthreads=4)
        per, bad = tally(got)
        self.assertEqual(bad, [])
        self.assertEqual(set(per), {"b1", "b3"})
        failed = heads(b2)
        self.assertGreater(failed, 10)
        self.assertEqual(heads(b1) + heads(b3), 150)
        self.assertEqual(self.retries("503"), failed)
        self.assertEqual(self.retries(), failed)
        att = self.attempts(150)
        self.assertEqual((att.count(2), att.count(1), len(att)), (failed, 150 - failed, 150))

        # Resets (on pooled connections too: the stale resend is free, then
        # the retry goes elsewhere).
        b2.control("reset=1")
        got = run_requests(lbd.listen, [("/", [])] * 150, nthreads=4)
        per, bad = tally(got)
        self.assertEqual((bad, set(per)), ([], {"b1", "b3"}))
        self.assertGreater(self.retries("reset"), 10)
        self.assertLessEqual(self.retries("reset"), heads(b2) - failed)

        # Down: connections refused.
        kill_backend(b2)
        got = run_requests(lbd.listen, [("/", [])] * 150, nthreads=4)
        per, bad = tally(got)
        self.assertEqual((bad, set(per)), ([], {"b1", "b3"}))
        self.assertGreater(self.retries("connect"), 10)
        self.assertEqual(self.exhausted(), 0)
        snap = self.pool_snapshot(lbd)
        self.assertEqual((snap["retries_in_flight"], snap["retries_waiting"]), (0, 0), snap)
        self.assertEqual(snap["retries"]["503"], failed)

    def test_retry_leaves_the_hashed_server(self):
        """With consistent hashing the strategy picks the same server for a
        key every time: a retry still goes to another one."""
        b1, b2, b3 = self.start_backends("b1", "b2", "b3")
        lbd = self._lbd([self._pool((b1, b2, b3), {"attempts": 3, "min_retries": 50},
                                    strategy="hash", hash_key="header:X-Key")], workers=2)
        b2.control("status=503")
        got = [self.get("/", lbd=lbd, headers=[("X-Key", "k%d" % i)]) for i in range(40)]
        self.assertEqual([r.status for r in got], [200] * 40)
        self.assertGreater(heads(b2), 0)
        self.assertEqual(self.retries("503"), heads(b2))
        self.assertEqual(heads(b1) + heads(b3), 40)

    def test_without_retries_failures_reach_clients(self):
        """The same pool without `retries`: the failing server's 503s reach
        the clients (what the test above turns into 100 % success)."""
        b1, b2, b3 = self.start_backends("b1", "b2", "b3")
        lbd = self._lbd([{"name": "web", "servers": [(b.addr, 1) for b in (b1, b2, b3)]}],
                        workers=2)
        b2.control("status=503")
        got = run_requests(lbd.listen, [("/", [])] * 60, nthreads=2)
        _, bad = tally(got)
        self.assertEqual(len(bad), heads(b2))
        self.assertGreater(len(bad), 0)
        self.assertEqual(self.retries(), 0)

    def test_per_try_timeout(self):
        """A server that takes 3 s to answer, per_try_timeout 300ms (well
        under backend_response): its tries time out and go elsewhere."""
        b1, b2 = self.start_backends("b1", "b2")
        lbd = self._lbd([self._pool((b1, b2), {"attempts": 2, "per_try_timeout": "300ms",
                                               "min_retries": 50})], workers=2)
        b2.control("delay=3000")
        got = [self.get("/", lbd=lbd) for _ in range(6)]
        self.assertEqual([(r.status, r.backend) for r in got], [(200, "b1")] * 6)
        self.assertEqual(self.retries("timeout"), heads(b2))
        self.assertGreater(heads(b2), 0)

    def test_post_not_retried_unless_allowed(self):
        """methods = "idempotent" (the default): a POST is never sent
        twice, with or without a body; a PUT is, its body kept and sent
        again whole."""
        b1, b2 = self.start_backends("b1", "b2")
        lbd = self._lbd([self._pool((b1, b2), {"attempts": 3, "min_retries": 50})], workers=2)
        b2.control("status=503")
        body = pattern_body(3000)
        with HttpConn(lbd.listen) as c:
            posts = [c.request("/", method="POST", body=body if i % 2 else b"")
                     for i in range(12)]
        self.assertEqual(sorted(r.status for r in posts), [200] * 6 + [503] * 6)
        self.assertEqual(heads(b2), 6)
        self.assertEqual(self.retries(), 0)
        with HttpConn(lbd.listen) as c:
            puts = [c.request("/", method="PUT", body=body) for _ in range(6)]
        self.assertEqual([(r.status, r.backend) for r in puts], [(200, "b1")] * 6)
        self.assertEqual({(r.header("X-Body-Bytes"), r.header("X-Body-Sum")) for r in puts},
                         {("3000", fnv1a64(body))})
        self.assertGreater(heads(b2), 6)
        self.assertEqual(self.retries("503"), heads(b2) - 6)

    def test_methods_all_replays_body(self):
        """methods = "all": a POST body up to `buffer` is kept and sent again
        whole to the other server (Content-Length and chunked; the failing
        server answers 503 after reading it, or resets before); a body over
        `buffer` is not kept, and its POST is not retried."""
        b1, b2 = self.start_backends("b1", "b2")
        lbd = self._lbd([self._pool((b1, b2), {"attempts": 2, "methods": "all",
                                               "buffer": "64k", "min_retries": 50})],
                        workers=2)
        body = bytes((i * 7 + (i >> 8)) & 0xff for i in range(40000))
        want = ("40000", fnv1a64(body))
        for fault, reason in (("status=503", "503"), ("reset=1", "reset")):
            b2.control(fault)
            h0 = heads(b2)
            with HttpConn(lbd.listen) as c:
                got = [c.request("/", method="POST", body=body) for _ in range(6)]
            self.assertEqual([(r.status, r.backend) for r in got], [(200, "b1")] * 6, fault)
            self.assertEqual({(r.header("X-Body-Bytes"), r.header("X-Body-Sum")) for r in got},
                             {want}, fault)
            self.assertGreater(self.retries(reason), 0)
            if reason == "503":
                self.assertEqual(self.retries(reason), heads(b2) - h0)

        # Chunked, in pieces.
        b2.control("status=503")
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p)
                           for p in (body[:10000], body[10000:25000], body[25000:])) + b"0\r\n\r\n"
        for _ in range(4):
            s = connect(lbd.listen)
            s.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                      b"Connection: close\r\n\r\n" + chunked[:30000])
            s.sendall(chunked[30000:])
            raw = recv_until_eof(s)
            s.close()
            head = raw.partition(b"\r\n\r\n")[0].decode()
            self.assertIn("200 OK", head.split("\r\n")[0], head)
            self.assertIn("X-Body-Sum: %s" % want[1], head)

        # Over `buffer`: not kept, so the POST that meets b2 gets its 503.
        big = pattern_body(100000)
        r0 = self.retries()
        h0 = heads(b2)
        with HttpConn(lbd.listen) as c:
            got = [c.request("/", method="POST", body=big) for _ in range(6)]
        self.assertEqual(sorted(r.status for r in got).count(503), heads(b2) - h0)
        self.assertGreater(heads(b2) - h0, 0)
        self.assertEqual(self.retries() - r0, 0)

    def test_no_retry_once_answer_began(self):
        """A backend that sends a response head and part of the body, or an
        interim 103, then resets: nothing is sent again, though `reset` is
        retried and another try would be allowed (one request each)."""
        for prefix in (b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789",
                       b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"):
            cut = CutServer(prefix)
            self.addCleanup(cut.stop)
            listen = f"127.0.0.1:{free_port()}"
            self.admin = f"127.0.0.1:{free_port()}"
            lbd = self.start_lbd(ext_config(listen, [self._pool((cut,), {
                "attempts": 3, "min_retries": 50, "backoff": "0", "backoff_max": "0"})],
                workers=1, admin=self.admin), listen, workers=1)
            for _ in range(3):
                s = connect(lbd.listen)
                s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                got = b""
                try:
                    while True:
                        d = s.recv(65536)
                        if not d:
                            break
                        got += d
                except OSError:
                    pass
                s.close()
                self.assertTrue(got.startswith(prefix.split(b"\r\n")[0]), got[:100])
            self.assertEqual(cut.count(), 3, prefix[:20])
            self.assertEqual(self.retries(), 0)
            lbd.stop()

    def test_budget_caps_amplification(self):
        """Total outage, 4 workers, 8 clients: every server answers 503.
        attempts = 3 would send each request 3 times; the budget (20 %,
        min_retries 3) keeps what the backends see near the clients' own
        count, and says how many retries it refused."""
        bs = self.start_backends("b1", "b2", "b3")
        lbd = self._lbd([self._pool(bs, {"attempts": 3, "budget": 20, "min_retries": 3,
                                         "backoff": "50ms", "backoff_max": "500ms"})])
        for b in bs:
            b.control("status=503")
        n = 400
        got = run_requests(lbd.listen, [("/", [])] * n, nthreads=8)
        self.assertEqual({r[0] for r in got}, {503})
        seen = sum(heads(b) for b in bs)
        retried = self.retries("503")
        self.assertEqual(seen, n + retried)
        self.assertLessEqual(seen, 1.2 * n + 3, f"{seen} backend requests for {n}")
        self.assertGreater(self.exhausted(), 0)
        snap = self.pool_snapshot(lbd)
        self.assertEqual((snap["retries_in_flight"], snap["retries_waiting"]), (0, 0), snap)

    def test_backoff_does_not_block_the_worker(self):
        """One worker; five requests wait out a backoff of up to 3 s before
        their retry; meanwhile 20 requests to another pool are answered,
        while one or more of the five still waits."""
        bad, good = self.start_backends("bad", "good")
        lbd = self._lbd([self._pool((bad,), {"attempts": 2, "backoff": "3s", "backoff_max": "3s",
                                             "min_retries": 10}, name="slow"),
                         {"name": "web", "servers": [(good.addr, 1)]}],
                        routes=[("*", "/slow", "slow"), ("*", "/", "web")], workers=1)
        bad.control("status=503")
        done = []
        lock = threading.Lock()

        def slow():
            r = self.get("/slow", lbd=lbd)
            with lock:
                done.append(r.status)
        threads = [threading.Thread(target=slow, daemon=True) for _ in range(5)]
        for t in threads:
            t.start()
        wait_for(lambda: self.retries("503", pool="slow") == 5, 10,
                 what="five requests waiting to retry")
        fast = [self.get("/", lbd=lbd).status for _ in range(20)]
        with lock:
            waiting = 5 - len(done)
        self.assertEqual(fast, [200] * 20)
        self.assertGreater(waiting, 0, "the backoff held the worker")
        for t in threads:
            t.join(20)
        self.assertEqual(done, [503] * 5)
        self.assertEqual(heads(bad), 10)

    def test_stale_connection_resend_is_free(self):
        """A pooled connection the backend closed as it was reused: the
        request goes again on a new one whatever the budget (here none:
        budget 0, min_retries 0), and is not counted as a retry; with
        methods = "all" a POST with a body is resent whole too. A fixed
        keepalive: "auto" lets an idle connection go after a second or two
        without requests (the pool tick), and on a loaded machine the next
        request can come that late: it would find no pooled connection."""
        rb = RawBackend()
        self.addCleanup(rb.stop)
        lbd = self._lbd([{"name": "web", "servers": [(rb.addr, 1)], "keepalive": 4,
                          "retries": {"attempts": 2, "budget": 0, "min_retries": 0,
                                      "methods": "all"}}], workers=1)
        self.assertEqual(self.get("/warm", lbd=lbd).status, 200)
        r = self.get("/again", lbd=lbd)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(rb.seen.count("GET /again HTTP/1.1"), 2)
        self.assertEqual(self.get("/warm2", lbd=lbd).status, 200)
        r = self.get("/post", lbd=lbd, method="POST", body=b"")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(rb.seen.count("POST /post HTTP/1.1"), 2, rb.seen)
        self.assertEqual((self.retries(), self.exhausted()), (0, 0))

    def test_bad_config_start_and_reload(self):
        """attempts 0: lbd refuses to start (FILE:LINE); a reload to an
        unknown `on` entry fails and keeps the running configuration."""
        (b1,) = self.start_backends("b1")
        listen = f"127.0.0.1:{free_port()}"

        def cfg(retries):
            return ext_config(listen, [self._pool((b1,), retries)])
        text = cfg({"attempts": 0})
        path = self.write_file(self.path("bad.conf"), text)
        p = subprocess.run([self.lbd_bin, "-c", path], stderr=subprocess.PIPE, timeout=20)
        self.assertEqual(p.returncode, 1)
        line = next(i for i, ln in enumerate(text.split("\n"), 1) if "attempts" in ln)
        self.assertRegex(p.stderr.decode(), rf"{re.escape(path)}:{line}: 'attempts' must "
                                             r"be between 1 and 10")
        lbd = self.start_lbd(cfg({"attempts": 2}), listen, workers=2)
        off = lbd.log_size()
        _, after = lbd.reload(cfg({"attempts": 2, "on": ["connect", "5xx", "teapot"]}),
                              expect_ok=False)
        self.assertEqual(after["reload_failures"], 1)
        lbd.wait_log(r"reload failed.*:\d+: retries: unknown 'on' entry \"teapot\"", since=off)
        self.assertServes(lbd)


class RetryWithLimitsTest(LbdTestCase):
    """Retries in a pool whose servers have max_requests: each try takes a
    place in flight when it is picked (under the limit, all workers) and
    gives it back when it fails; a retry that finds every server that could
    take it full waits in the pool's queue."""

    _lbd = RetryTest._lbd
    retries = RetryTest.retries
    pool_snapshot = RetryTest.pool_snapshot
    attempts = RetryTest.attempts

    def server_status(self, addr):
        return find_server(admin_status(self.admin), addr)

    def test_retry_within_max_requests(self):
        """Three servers with max_requests = 2, one answering 503, 4
        workers, 8 clients on connections of their own asking for 200 ms
        answers, attempts = 2: every request succeeds, each 503 was retried
        once to a server not tried (waiting for its room, not going back to
        the failing server that has room), the servers that answered never
        had more than 2 requests at once, and at the end nothing is in
        flight, retrying or waiting."""
        b1, b2, b3 = self.start_backends("b1", "b2", "b3")
        pool = {"name": "web", "servers": [(b.addr, 1, {"max_requests": 2}) for b in (b1, b2, b3)],
                "retries": {"attempts": 2, "min_retries": 50},
                "queue": {"size": 100, "timeout": "30s"}}
        lbd = self._lbd([pool], timeouts={"backend_response": "30s"})
        b2.control("status=503")
        got = run_requests(lbd.listen, [("/?delay=200", [])] * 48, nthreads=8, new_conn=True)
        per, bad = tally(got)
        self.assertEqual(bad, [])
        self.assertEqual(set(per), {"b1", "b3"})
        self.assertEqual(heads(b1) + heads(b3), 48)
        failed = heads(b2)
        self.assertGreater(failed, 0)
        self.assertEqual(self.retries("503"), failed)
        for b in (b1, b3):
            self.assertEqual(b.stats()["delayed_peak"], 2, b.name)
        for b in (b1, b2, b3):
            srv = self.server_status(b.addr)
            self.assertEqual((srv["max_requests"], srv["in_flight"]), (2, 0), srv)
        snap = self.pool_snapshot(lbd)
        self.assertEqual((snap["retries_in_flight"], snap["retries_waiting"], snap["queue_depth"]),
                         (0, 0, 0), snap)
        self.assertEqual(admin_metrics(self.admin).value("lbd_backend_active_requests",
                                                         pool="web", server=b1.addr), 0)

    def test_retry_waits_in_the_queue_when_every_server_is_full(self):
        """Two servers with max_requests = 1 and a breaker that opens at the
        first failure, one worker. A slow request holds the good server's
        place; the next one goes to the other server, which answers 503
        (its breaker opens): its retry finds the one server left full and
        waits in the queue (seen there, counted as a retry waiting) rather
        than fail; when the slow request ends it goes to the good server.
        The failing server had the request once; nothing left in flight."""
        ba, bb = self.start_backends("b1", "b2")
        pool = {"name": "web", "servers": [(b.addr, 1, {"max_requests": 1}) for b in (ba, bb)],
                "retries": {"attempts": 3, "min_retries": 50},
                "circuit_breaker": {"failures": 1, "open": "60s"},
                "queue": {"size": 10, "timeout": "30s"}}
        lbd = self._lbd([pool], workers=1, access_log=True,
                        timeouts={"backend_response": "30s"})
        slow = Held(lbd.listen, "/?delay=2500")
        wait_for(lambda: ba.stats()["delayed"] + bb.stats()["delayed"] == 1, 10,
                 what="the slow request at a backend")
        good, failing = (ba, bb) if ba.stats()["delayed"] == 1 else (bb, ba)
        failing.control("status=503")
        nxt = Held(lbd.listen, "/")
        wait_for(lambda: self.pool_snapshot(lbd)["queue_depth"] == 1, 10,
                 what="the retry in the queue")
        snap = self.pool_snapshot(lbd)
        self.assertEqual((snap["retries"]["503"], snap["retries_in_flight"],
                          snap["retries_waiting"], snap["queued"]), (1, 1, 1, 1), snap)
        self.assertEqual(slow.result(), (200, good.name))
        self.assertEqual(nxt.result(), (200, good.name))
        self.assertEqual((heads(failing), heads(good)), (1, 2))
        self.assertEqual(sorted(self.attempts(2)), [1, 2])
        for b in (ba, bb):
            self.assertEqual(self.server_status(b.addr)["in_flight"], 0, b.name)
        snap = self.pool_snapshot(lbd)
        self.assertEqual((snap["retries_in_flight"], snap["retries_waiting"], snap["queue_depth"],
                          snap["queue_refused"]), (0, 0, 0, {"full": 0, "timeout": 0}), snap)
