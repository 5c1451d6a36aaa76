"""Circuit breaker: one state machine per server in shared memory, for all
workers together. Real backends made to fail and recover through the test
backend's GET /control (tests/backend/testbackend.c); what reached a backend
is counted there (GET /stats "heads"), what lbd decided in /status,
/metrics and the log. No timing assertions: counts only."""
import re
import subprocess

from lbdtest import Backend, LbdTestCase, free_port, wait_for
from lbdextra import (Load, admin_metrics, admin_status, ext_config, find_server, kill_backend,
                      wait_breaker)


def heads(b):
    return b.stats()["heads"]


class BreakerTest(LbdTestCase):

    def _lbd(self, pools, routes=None, workers=4):
        listen = f"127.0.0.1:{free_port()}"
        self.admin = f"127.0.0.1:{free_port()}"
        cfg = ext_config(listen, pools, routes=routes, workers=workers, admin=self.admin)
        return self.start_lbd(cfg, listen, workers=workers)

    def _server(self, b, pool=None):
        return find_server(admin_status(self.admin), b.addr, pool)

    def _log_count(self, lbd, regex):
        return len(re.findall(regex, lbd.log()))

    def test_open_trials_close(self):
        """4 workers, 3 servers, b2 answers 503: it is opened after exactly
        `failures` (3) of them, logged once. Half-open, it gets exactly
        half_open_requests (2) trials whatever the load (the trials hang at
        b2); they fail when b2 dies, it opens again; b2 back, the next
        trials succeed and it closes. Over the whole story b2 got nothing
        but trials while not closed, clients saw no failure but the trials',
        and each transition is logged once, not once per worker."""
        b1, b2, b3 = self.start_backends("b1", "b2", "b3")
        breaker = {"failures": 3, "failure_ratio": 0, "open": "1s", "open_max": "1s",
                   "half_open_requests": 2}
        lbd = self._lbd([{"name": "web", "servers": [(b.addr, 1) for b in (b1, b2, b3)],
                          "circuit_breaker": breaker,
                          "timeouts": {"backend_response": "90s"}}])
        b2.control("status=503")
        got = [self.get("/") for _ in range(30)]
        bad = [r for r in got if r.status != 200]
        self.assertEqual([(r.status, r.backend) for r in bad], [(503, "b2")] * 3, got)
        srv = self._server(b2)
        self.assertEqual((srv["breaker_opened"], srv["breaker_open_interval_ms"]), (1, 1000), srv)
        self.assertEqual(heads(b2), 3)
        lbd.wait_log(rf"server {b2.addr} of pool 'web': circuit breaker OPEN for 1000 ms "
                     r"\(3 failed requests in a row\)")

        # Half-open under load from 4 clients: the trials hang at b2 (a 60 s
        # delay), so every other request must go elsewhere.
        b2.control("delay=60000")
        wait_breaker(self.admin, b2.addr, "half_open")
        h0 = heads(b2)
        load = Load(lbd.listen, nthreads=4, max_seconds=120, timeout=90)
        try:
            wait_for(lambda: heads(b2) >= h0 + 2, 20, what="the two trials to reach b2")
            load.wait_ok(load.ok_count() + 300)
            self.assertEqual(heads(b2), h0 + 2, "exactly half_open_requests trials")
            srv = self._server(b2)
            self.assertEqual((srv["breaker"], srv["breaker_transitions"]["half_open"]),
                             ("half_open", 1), srv)
            # b2 dies: its trials fail, it opens again; later rounds' trials
            # find it dead. Then it comes back and a round of trials closes it.
            kill_backend(b2)
            wait_for(lambda: self._server(b2)["breaker_transitions"]["open"] >= 3, 20,
                     what="two rounds of failed trials")
            back = Backend(self, "b2", port=b2.port)
            self.backends.append(back)
            srv = wait_breaker(self.admin, b2.addr, "closed", timeout=20)
            load.wait_ok(load.ok_count() + 100)
            wait_for(lambda: heads(back) > 2, 20, what="b2 to get requests once closed")
        finally:
            recs = load.stop()
        srv = self._server(b2)
        tr = srv["breaker_transitions"]
        self.assertEqual(tr["closed"], 1, srv)
        self.assertEqual(tr["open"], srv["breaker_opened"])
        self.assertEqual(tr["half_open"], tr["open"], srv)     # every open round half-opened
        # Only trials ever failed: at most 2 per round (the 2 first ones
        # only delayed until b2 died).
        failed = [r for r in recs if r[2] != 200]
        self.assertLessEqual(len(failed), 2 * tr["half_open"], failed[:10])
        self.assertTrue(all(r[2] in (502, 504, "error") for r in failed), failed[:10])
        # One log line per transition, though 4 workers saw them all.
        self.assertEqual(self._log_count(lbd, rf"server {re.escape(b2.addr)} of pool 'web': "
                                              r"circuit breaker OPEN"), tr["open"])
        self.assertEqual(self._log_count(lbd, r"circuit breaker HALF-OPEN"), tr["half_open"])
        self.assertEqual(self._log_count(lbd, r"circuit breaker CLOSED \(2 trial requests"), 1)
        m = admin_metrics(self.admin)
        for to in ("closed", "open", "half_open"):
            self.assertEqual(m.value("lbd_backend_breaker_transitions_total", pool="web",
                                     server=b2.addr, to=to), tr[to])
        self.assertEqual(m.value("lbd_backend_breaker_state", pool="web", server=b2.addr), 0)
        self.assertEqual(m.value("lbd_backend_breaker_state", pool="web", server=b1.addr), 0)
        self.assertEqual(find_server(lbd.snapshot(), b2.addr)["breaker"], "closed")

    def test_no_request_while_open(self):
        """4 workers, open for a minute: 400 requests from 4 clients, not
        one reaches the open server (counted at the backend), all succeed;
        /metrics says 1 (open)."""
        b1, b2, b3 = self.start_backends("b1", "b2", "b3")
        lbd = self._lbd([{"name": "web", "servers": [(b.addr, 1) for b in (b1, b2, b3)],
                          "circuit_breaker": {"failures": 2, "open": "60s"}}])
        b2.control("reset=1")           # resets count as failures too
        st = [self.get("/").status for _ in range(9)]
        self.assertEqual(st.count(502), 2, st)
        wait_breaker(self.admin, b2.addr, "open")
        b2.control("")
        h0 = heads(b2)
        load = Load(lbd.listen, nthreads=4, max_seconds=60)
        try:
            load.wait_ok(400)
        finally:
            recs = load.stop()
        self.assertEqual([r for r in recs if r[2] != 200], [])
        self.assertEqual({r[3] for r in recs}, {"b1", "b3"})
        self.assertEqual(heads(b2), h0)
        m = admin_metrics(self.admin)
        self.assertEqual(m.value("lbd_backend_breaker_state", pool="web", server=b2.addr), 1)
        self.assertEqual(m.value("lbd_backend_breaker_transitions_total", pool="web",
                                 server=b2.addr, to="open"), 1)

    def test_ratio_trigger_and_all_open(self):
        """failure_ratio 0.5 of at least 10 requests: alternate good and
        failing requests (never two failures in a row, the consecutive
        trigger of 2 never fires) open the pool's only server at the 10th;
        then the pool answers 503 at once, without a connection to it,
        and counts those."""
        (b1,) = self.start_backends("b1")
        lbd = self._lbd([{"name": "web", "servers": [(b1.addr, 1)],
                          "circuit_breaker": {"failures": 2, "failure_ratio": 0.5,
                                              "window": "60s", "min_requests": 10,
                                              "open": "60s"}}], workers=2)
        for i in range(10):
            r = self.get("/?status=503" if i % 2 else "/")
            self.assertEqual((r.status, r.backend), (503 if i % 2 else 200, "b1"), (i, r))
        lbd.wait_log(rf"server {b1.addr} of pool 'web': circuit breaker OPEN for 60000 ms "
                     r"\(5 of the last 10 requests failed\)")
        conns = b1.stats()["connections"]
        for _ in range(5):
            r = self.get("/")
            self.assertEqual((r.status, r.backend), (503, None), r)
        st = b1.stats()
        self.assertEqual(st["heads"], 10)
        self.assertEqual(st["connections"], conns + 1, "only our /stats connected")
        st = admin_status(self.admin)
        self.assertEqual((st["pools"][0]["breaker_refused"], st["pools"][0]["breakers_open"]),
                         (5, 1))
        self.assertEqual(admin_metrics(self.admin).value("lbd_pool_breaker_refused_total",
                                                         pool="web"), 5)

    def test_max_ejection(self):
        """max_ejection_percent 25 of 4 servers: of two failing servers one
        is opened, the other stays in rotation and keeps getting requests."""
        bs = self.start_backends("b1", "b2", "b3", "b4")
        lbd = self._lbd([{"name": "web", "servers": [(b.addr, 1) for b in bs],
                          "circuit_breaker": {"failures": 2, "failure_ratio": 0,
                                              "open": "60s", "max_ejection_percent": 25}}],
                        workers=2)
        bs[2].control("status=503")
        bs[3].control("status=503")
        for _ in range(24):
            self.get("/")
        states = sorted(self._server(b)["breaker"] for b in bs[2:])
        self.assertEqual(states, ["closed", "open"])
        self.assertEqual(admin_status(self.admin)["pools"][0]["breakers_open"], 1)
        held = next(b for b in bs[2:] if self._server(b)["breaker"] == "closed")
        h0 = heads(held)
        st = [self.get("/").status for _ in range(30)]
        self.assertEqual(heads(held), h0 + 10, "the held server stays in rotation")
        self.assertEqual(st.count(503), 10, st)
        self.assertEqual(self._server(held)["breaker_opened"], 0)
        self.assertEqual(self._log_count(lbd, "circuit breaker OPEN"), 1)

    def test_timeouts_count(self):
        """A backend that does not answer in time is failing: its
        backend_response timeout, or the request's deadline once the whole
        request was sent, counts against it (504 to the client)."""
        b1, b2 = self.start_backends("b1", "b2")
        breaker = {"failures": 2, "failure_ratio": 0, "open": "60s"}
        servers = [(b1.addr, 1), (b2.addr, 1)]
        self._lbd([{"name": "resp", "servers": servers, "circuit_breaker": breaker,
                    "timeouts": {"backend_response": "200ms"}},
                   {"name": "dl", "servers": servers, "circuit_breaker": breaker,
                    "timeouts": {"deadline": "300ms"}}],
                  routes=[("*", "/r", "resp"), ("*", "/d", "dl")], workers=2)
        b2.control("delay=3000")
        for path in ("/r", "/d"):
            pool = "resp" if path == "/r" else "dl"
            st = [self.get(path).status for _ in range(6)]
            self.assertEqual(st.count(504), 2, (pool, st))
            srv = wait_breaker(self.admin, b2.addr, "open", pool=pool)
            self.assertEqual(srv["failures"], 2, srv)

    def test_retry_after(self):
        """A 503 with Retry-After: 7 opens the server for 7 s, not `open`."""
        b1, b2 = self.start_backends("b1", "b2")
        lbd = self._lbd([{"name": "web", "servers": [(b1.addr, 1), (b2.addr, 1)],
                          "circuit_breaker": {"failures": 1, "open": "500ms", "open_max": "1m"}}],
                        workers=2)
        b2.control("status=503&retry_after=7")
        st = [self.get("/").status for _ in range(4)]
        self.assertEqual(st.count(503), 1, st)
        lbd.wait_log(rf"server {b2.addr} of pool 'web': circuit breaker OPEN for 7000 ms")
        self.assertEqual(self._server(b2)["breaker_open_interval_ms"], 500)

    def test_bad_config_start_and_reload(self):
        """An out-of-range breaker value: lbd refuses to start (FILE:LINE),
        and a reload to it fails and keeps the running configuration."""
        (b1,) = self.start_backends("b1")
        listen = f"127.0.0.1:{free_port()}"

        def cfg(ratio):
            return ext_config(listen, [{"name": "web", "servers": [(b1.addr, 1)],
                                        "circuit_breaker": {"failure_ratio": ratio}}])
        path = self.write_file(self.path("bad.conf"), cfg(1.5))
        p = subprocess.run([self.lbd_bin, "-c", path], stderr=subprocess.PIPE, timeout=20)
        self.assertEqual(p.returncode, 1)
        line = next(i for i, ln in enumerate(cfg(1.5).split("\n"), 1) if "failure_ratio" in ln)
        self.assertRegex(p.stderr.decode(), rf"{re.escape(path)}:{line}: 'failure_ratio' must "
                                             r"be between 0 and 1")
        lbd = self.start_lbd(cfg(0.5), listen, workers=2)
        off = lbd.log_size()
        _, after = lbd.reload(cfg(2.0), expect_ok=False)
        self.assertEqual(after["reload_failures"], 1)
        lbd.wait_log(r"reload failed.*:\d+: 'failure_ratio' must be between 0 and 1", since=off)
        self.assertServes(lbd)

    def test_reload_keeps_and_removes_breaker(self):
        """An open breaker stays open over a reload that keeps the breaker
        (every worker is new); a reload without circuit_breaker closes it."""
        b1, b2 = self.start_backends("b1", "b2")
        listen = f"127.0.0.1:{free_port()}"
        self.admin = f"127.0.0.1:{free_port()}"

        def cfg(breaker):
            pool = {"name": "web", "servers": [(b1.addr, 1), (b2.addr, 1)]}
            if breaker:
                pool["circuit_breaker"] = {"failures": 1, "open": "60s"}
            return ext_config(listen, [pool], workers=2, admin=self.admin)
        lbd = self.start_lbd(cfg(True), listen, workers=2)
        b2.control("status=503")
        for _ in range(4):
            self.get("/")
        wait_breaker(self.admin, b2.addr, "open")
        b2.control("")
        # (lbd -s, not /status: each reload restarts the admin listener)
        lbd.reload(cfg(True))
        h0 = heads(b2)
        self.assertEqual({self.get("/").backend for _ in range(10)}, {"b1"})
        self.assertEqual(heads(b2), h0)
        self.assertEqual(find_server(lbd.snapshot(), b2.addr)["breaker"], "open")
        lbd.reload(cfg(False))
        self.assertEqual(find_server(lbd.snapshot(), b2.addr)["breaker"], "closed")
        self.assertEqual({self.get("/").backend for _ in range(10)}, {"b1", "b2"})
