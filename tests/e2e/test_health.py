"""Health: active checks (HTTP and TCP) run by the control process, once
per instance; passive health (a preset of the circuit breaker, see
test_breaker) from failed requests; DOWN and open servers skipped."""
import time

from lbdtest import Backend, ConnectionClosed, HttpConn, LbdTestCase, free_port, wait_for
from lbdextra import (Load, PyServer, admin_metrics, admin_status, control_pids, ext_config,
                      find_server, kill_backend, run_requests, tally, wait_breaker, wait_health)

HTTP_CHECK = {"path": "/healthz", "interval": "300ms", "timeout": "200ms", "rise": 2, "fall": 2}
TCP_CHECK = {"interval": "300ms", "timeout": "200ms", "rise": 2, "fall": 2}


class HealthTest(LbdTestCase):

    def _lbd(self, pools, routes=None, workers=2, extra=""):
        listen = f"127.0.0.1:{free_port()}"
        self.admin = f"127.0.0.1:{free_port()}"
        cfg = ext_config(listen, pools, routes=routes, workers=workers, admin=self.admin,
                         extra=extra)
        return self.start_lbd(cfg, listen, workers=workers)

    def _restart_backend(self, old):
        b = Backend(self, old.name, port=old.port)
        self.backends.append(b)
        return b

    def _down_then_up(self, check, want_error):
        bs = self.start_backends("b1", "b2", "b3")
        lbd = self._lbd([{"name": "web", "servers": [(b.addr, 1) for b in bs],
                          "health_check": check}])
        for b in bs:
            self.assertEqual(find_server(admin_status(self.admin), b.addr)["health"], "up")
        # checks are running and pass
        wait_for(lambda: all(find_server(admin_status(self.admin), b.addr)["checks"]["ok"] >= 2
                             for b in bs), 10, what="two passed checks on every server")
        off = lbd.log_size()
        victim = bs[1]
        kill_backend(victim)
        srv = wait_health(self.admin, victim.addr, "down", reason="health_check")
        self.assertTrue(srv["checks"]["last_error"], srv)
        self.assertRegex(srv["checks"]["last_error"], want_error)
        self.assertGreaterEqual(srv["checks"]["consecutive_failures"], 2, srv)
        self.assertEqual(srv["checks"]["consecutive_successes"], 0, srv)
        lbd.wait_log(rf"server {victim.addr} of pool 'web' is DOWN", since=off)
        for b in (bs[0], bs[2]):
            self.assertEqual(find_server(admin_status(self.admin), b.addr)["health"], "up")

        per, bad = tally(run_requests(lbd.listen, [("/", ())] * 300, nthreads=4))
        self.assertEqual(bad, [], "no request fails once the server is DOWN")
        self.assertEqual(per, {"b1": 150, "b3": 150})

        off = lbd.log_size()
        back = self._restart_backend(victim)
        srv = wait_health(self.admin, back.addr, "up")
        self.assertEqual(srv["down_reason"], "none", srv)
        self.assertGreaterEqual(srv["checks"]["consecutive_successes"], 2, srv)
        lbd.wait_log(rf"server {victim.addr} of pool 'web' is UP", since=off)
        per, bad = tally(run_requests(lbd.listen, [("/", ())] * 30, nthreads=1))
        self.assertEqual(bad, [])
        self.assertEqual(per, {"b1": 10, "b2": 10, "b3": 10})
        return lbd, bs, back

    def test_http_check_down_and_back_up(self):
        """GET /healthz every 300 ms, fall 2, rise 2: a killed backend goes
        DOWN (reason health_check, last_error set, logged), 300 requests
        all succeed on the other two; restarted on its port it comes back
        UP and gets its share again."""
        lbd, bs, back = self._down_then_up(HTTP_CHECK, r"(?i)refused")
        # The probes are real HTTP requests: besides the 10 proxied ones
        # and our /stats, the restarted backend got at least `rise` probes.
        proxied = find_server(admin_status(self.admin), back.addr)["requests"]
        self.assertEqual(proxied, 10)
        st = back.stats()
        self.assertGreaterEqual(st["requests"] - proxied - 1, 2, st)

    def test_tcp_check_down_and_back_up(self):
        """No path: a TCP connect is the check; same life cycle, and the
        backend sees connections but no requests from it."""
        lbd, bs, back = self._down_then_up(TCP_CHECK, r"(?i)refused")
        s0 = bs[0].stats()
        ok0 = find_server(admin_status(self.admin), bs[0].addr)["checks"]["ok"]
        wait_for(lambda: find_server(admin_status(self.admin), bs[0].addr)["checks"]["ok"] >= ok0 + 3,
                 10, what="3 more TCP checks of b1")
        s1 = bs[0].stats()
        self.assertGreaterEqual(s1["connections"] - s0["connections"], 3 + 1, (s0, s1))
        self.assertEqual(s1["requests"] - s0["requests"], 1,
                         f"only our own /stats is a request: {s0} {s1}")

    def test_expect_status(self):
        """path = "/healthz?status=500": the default expect_status 200-399
        fails it (DOWN, last_error names the status, its pool answers 503);
        the same server checked with path /healthz stays UP, and with
        expect_status = "500" the 500 counts as healthy; a check answered
        after its timeout fails."""
        (b,) = self.start_backends("b1")
        pools = [{"name": "bad", "servers": [(b.addr, 1)],
                  "health_check": dict(HTTP_CHECK, path="/healthz?status=500")},
                 {"name": "good", "servers": [(b.addr, 1)], "health_check": HTTP_CHECK},
                 {"name": "odd", "servers": [(b.addr, 1)],
                  "health_check": dict(HTTP_CHECK, path="/healthz?status=500",
                                       expect_status="500")},
                 {"name": "slow", "servers": [(b.addr, 1)],
                  "health_check": dict(HTTP_CHECK, path="/healthz?delay=1000")}]
        routes = [("*", "/bad", "bad"), ("*", "/good", "good"), ("*", "/odd", "odd"),
                  ("*", "/slow", "slow")]
        self._lbd(pools, routes=routes)
        srv = wait_health(self.admin, b.addr, "down", pool="bad", reason="health_check")
        self.assertIn("500", srv["checks"]["last_error"], srv)
        self.assertEqual(self.get("/bad").status, 503)
        # an answer later than the check's timeout (200 ms) is a failure too
        srv = wait_health(self.admin, b.addr, "down", pool="slow", reason="health_check")
        self.assertRegex(srv["checks"]["last_error"], r"(?i)time")

        def others_checked():
            st = admin_status(self.admin)
            return all(find_server(st, b.addr, p)["checks"]["ok"] >= 4 for p in ("good", "odd"))
        wait_for(others_checked, 10, what="4 passed checks in pools good and odd")
        st = admin_status(self.admin)
        for p in ("good", "odd"):
            s = find_server(st, b.addr, p)
            self.assertEqual((s["health"], s["checks"]["failed"]), ("up", 0), (p, s))
        self.assertEqual(self.get("/good").status, 200)
        self.assertEqual(self.get("/odd").status, 200)

    def test_check_needs_whole_valid_head_in_time(self):
        """A check passes on a complete, valid response head (status line,
        headers, empty line) within `timeout` in all, no larger than
        limits.header_size: a server that answers with an endless head, a
        1 GB header line or a head trickled a byte per 200 ms (timeout 1 s)
        is one real requests cannot use, and goes DOWN, logged with why;
        a head of 4000 bytes under the 8 KiB limit passes."""
        (b,) = self.start_backends("b1")
        check = {"interval": "300ms", "timeout": "1s", "rise": 2, "fall": 2}
        paths = {"endless": "/healthz?endless=1", "huge": "/healthz?hdrsize=1073741824",
                 "trickle": "/healthz?trickle=200", "big": "/healthz?hdrsize=4000",
                 "good": "/healthz"}
        pools = [{"name": name, "servers": [(b.addr, 1)],
                  "health_check": dict(check, path=path)} for name, path in paths.items()]
        lbd = self._lbd(pools, extra='limits = { header_size = "8k"; };')
        why = {"endless": r"^response head over 8192 bytes \(limits\.header_size\)$",
               "huge": r"^response head over 8192 bytes \(limits\.header_size\)$",
               "trickle": r"^timeout: no complete response head after 1000 ms \(\d+ bytes\)$"}
        for name, rx in why.items():
            srv = wait_health(self.admin, b.addr, "down", pool=name, reason="health_check")
            self.assertRegex(srv["checks"]["last_error"], rx, (name, srv))
            self.assertEqual(srv["checks"]["ok"], 0, (name, srv))
            lbd.wait_log(rf"server {b.addr} of pool '{name}' is DOWN \(2 failed health "
                         rf"checks, last: {rx[1:-1]}\)")

        def others_checked():
            st = admin_status(self.admin)
            return all(find_server(st, b.addr, p)["checks"]["ok"] >= 3 for p in ("big", "good"))
        wait_for(others_checked, 10, what="3 passed checks in pools big and good")
        for name in ("big", "good"):
            srv = find_server(admin_status(self.admin), b.addr, name)
            self.assertEqual((srv["health"], srv["checks"]["failed"]), ("up", 0), (name, srv))

    def test_checks_once_per_instance(self):
        """workers = 4, interval 300 ms: over about 3 s the backend gets about
        duration/interval probes (fewer than twice that), as many as
        checks.ok says: one control process probes, not each worker."""
        (b,) = self.start_backends("b1")
        lbd = self._lbd([{"name": "web", "servers": [(b.addr, 1)], "health_check": HTTP_CHECK}],
                        workers=4)
        self.assertEqual(len(control_pids(lbd)), 1, "exactly one control process")
        s0 = b.stats()["requests"]
        ok0 = find_server(admin_status(self.admin), b.addr)["checks"]["ok"]
        t0 = time.monotonic()
        wait_for(lambda: time.monotonic() - t0 >= 3.0 and
                 find_server(admin_status(self.admin), b.addr)["checks"]["ok"] >= ok0 + 5,
                 20, interval=0.1, what="3 s and 5 probes")
        ok1 = find_server(admin_status(self.admin), b.addr)["checks"]["ok"]
        s1 = b.stats()["requests"]
        elapsed = time.monotonic() - t0
        probes = s1 - s0 - 1        # minus the second /stats
        self.assertLess(probes, 2 * (elapsed / 0.3) + 2,
                        f"{probes} probes in {elapsed:.1f}s at a 300 ms interval")
        self.assertGreaterEqual(probes, ok1 - ok0, (probes, ok0, ok1))
        self.assertLessEqual(probes, ok1 - ok0 + 2, (probes, ok0, ok1))
        self.assertEqual(lbd.snapshot()["totals"]["requests"], 0, "probes bypass the workers")

    # -- passive --------------------------------------------------------------

    def test_passive_refused_opens_breaker(self):
        """passive_health failures = 3, no active check: a server whose port
        refuses connections costs at most 3 failed requests; then its
        breaker is open (logged), it is skipped (no more 502s) and stays UP
        as far as health goes: passive health is the breaker's preset."""
        b1, b3 = self.start_backends("b1", "b3")
        dead = f"127.0.0.1:{free_port()}"
        lbd = self._lbd([{"name": "web", "servers": [(b1.addr, 1), (dead, 1), (b3.addr, 1)],
                          "passive_health": {"failures": 3, "cooldown": "60s"}}])
        res = [self.get("/") for _ in range(12)]
        fails = [r for r in res if r.status != 200]
        self.assertTrue(all(r.status == 502 for r in fails), res)
        self.assertGreaterEqual(len(fails), 1, res)
        self.assertLessEqual(len(fails), 3, res)
        srv = wait_breaker(self.admin, dead, "open", timeout=5)
        self.assertEqual((srv["failures"], srv["health"], srv["breaker_open_interval_ms"]),
                         (3, "up", 60000), srv)
        lbd.wait_log(rf"server {dead} of pool 'web': circuit breaker OPEN for 60000 ms "
                     r"\(3 failed requests in a row\)")
        per, bad = tally(run_requests(lbd.listen, [("/", ())] * 200, nthreads=4))
        self.assertEqual(bad, [], "a server with an open breaker is skipped")
        self.assertEqual(set(per), {"b1", "b3"})
        self.assertEqual(find_server(admin_status(self.admin), dead)["failures"], 3)

    def test_passive_cooldown_then_success_brings_it_back(self):
        """Without an active check, an open server is tried again after the
        cooldown (one trial request); once that succeeds it is closed."""
        (b1,) = self.start_backends("b1")
        port = free_port()
        dead = f"127.0.0.1:{port}"
        self._lbd([{"name": "web", "servers": [(b1.addr, 1), (dead, 1)],
                   "passive_health": {"failures": 2, "cooldown": "1s"}}])
        for _ in range(4):
            self.get("/")
        wait_breaker(self.admin, dead, "open", timeout=5)
        b2 = Backend(self, "b2", port=port)
        self.backends.append(b2)

        def reached():
            return self.get("/").backend == "b2"
        wait_for(reached, 15, interval=0.05, what="b2 to get requests after the cooldown")
        srv = wait_breaker(self.admin, dead, "closed", timeout=5)
        self.assertEqual(srv["breaker_transitions"]["closed"], 1, srv)

    def test_breaker_independent_of_checks(self):
        """Active checks and the breaker are two notions: a server that
        passes its health checks but answers requests with 500 (on_5xx) has
        its breaker opened; the checks keep it UP and keep passing, and do
        not close the breaker: it gets no request while open."""
        (good,) = self.start_backends("good")
        flaky = PyServer("flaky", status=500, healthy_path="/healthz")
        self.addCleanup(flaky.stop)
        lbd = self._lbd([{"name": "web", "servers": [(good.addr, 1), (flaky.addr, 1)],
                          "health_check": HTTP_CHECK,
                          "passive_health": {"failures": 2, "on_5xx": True, "cooldown": "60s"}}])
        off = lbd.log_size()
        st = [self.get("/").status for _ in range(4)]
        self.assertEqual(sorted(st), [200, 200, 500, 500], st)
        srv = wait_breaker(self.admin, flaky.addr, "open", timeout=5)
        lbd.wait_log(rf"server {flaky.addr} of pool 'web': circuit breaker OPEN", since=off)
        ok0 = srv["checks"]["ok"]
        served = flaky.count()
        wait_for(lambda: find_server(admin_status(self.admin), flaky.addr)["checks"]["ok"] >= ok0 + 3,
                 10, what="3 more passed checks")
        for _ in range(10):
            r = self.get("/")
            self.assertEqual((r.status, r.backend), (200, "good"))
        s = find_server(admin_status(self.admin), flaky.addr)
        self.assertEqual((s["health"], s["breaker"]), ("up", "open"), s)
        self.assertEqual(flaky.count(), served, "requests reached it while open (checks are not counted)")

    def test_reload_dropping_health_check_frees_down_server(self):
        """A server DOWN by its health check, then a reload whose pool has no
        health_check any more: nothing will ever check it again, so it must
        not stay DOWN for good (its pool answers 503 meanwhile)."""
        (b,) = self.start_backends("b1")
        listen = f"127.0.0.1:{free_port()}"
        self.admin = f"127.0.0.1:{free_port()}"

        def cfg(check):
            return ext_config(listen, [{"name": "web", "servers": [(b.addr, 1)],
                                        "health_check": check}], admin=self.admin)
        lbd = self.start_lbd(cfg(dict(HTTP_CHECK, path="/healthz?status=503")), listen, workers=2)
        wait_health(self.admin, b.addr, "down", reason="health_check")
        self.assertEqual(self.get("/").status, 503)
        lbd.reload(cfg(None))
        wait_for(lambda: self.get("/").status == 200, 5,
                 what="the server to take requests once no check is configured")
        self.assertEqual(find_server(admin_status(self.admin), b.addr)["health"], "up")

    def test_reload_new_check_path_applies(self):
        """A reload that fixes the check path: the restarted control process
        checks the new path and the server comes back UP."""
        (b,) = self.start_backends("b1")
        listen = f"127.0.0.1:{free_port()}"
        self.admin = f"127.0.0.1:{free_port()}"

        def cfg(path):
            return ext_config(listen, [{"name": "web", "servers": [(b.addr, 1)],
                                        "health_check": dict(HTTP_CHECK, path=path)}],
                              admin=self.admin)
        lbd = self.start_lbd(cfg("/healthz?status=404"), listen, workers=2)
        srv = wait_health(self.admin, b.addr, "down", reason="health_check")
        self.assertIn("404", srv["checks"]["last_error"])
        lbd.reload(cfg("/healthz"))
        wait_health(self.admin, b.addr, "up")
        self.assertEqual(self.get("/").status, 200)

    def test_retiring_worker_cannot_strand_a_server_down(self):
        """A reload drops the pool's health check. A request of the retiring
        worker then fails. The old configuration would mark the server DOWN
        for the checks to revive, but the new one has no checks: the server
        would stay DOWN for good. Only the current generation writes health
        state, so once the server is back it serves again."""
        (b,) = self.start_backends("b1")
        listen = f"127.0.0.1:{free_port()}"
        self.admin = f"127.0.0.1:{free_port()}"
        passive = {"failures": 1, "cooldown": "500ms"}

        def cfg(check):
            pool = {"name": "web", "servers": [(b.addr, 1)], "passive_health": passive}
            if check:
                pool["health_check"] = dict(HTTP_CHECK, interval="60s")
            return ext_config(listen, [pool], workers=1, admin=self.admin)
        lbd = self.start_lbd(cfg(True), listen, workers=1)
        slow = HttpConn(listen, timeout=30)
        self.addCleanup(slow.close)
        slow.send(b"GET /?delay=5000 HTTP/1.1\r\nHost: lbd.test\r\n\r\n")
        lbd.wait_in_flight(1)
        lbd.reload(cfg(False))
        kill_backend(b)                 # the retiring worker's request fails
        try:
            status = slow.read_response().status
        except (OSError, ConnectionClosed):
            status = None
        self.assertNotEqual(status, 200, "the retiring worker's request went through")
        back = Backend(self, "b1", port=b.port)
        self.backends.append(back)

        def serves():
            try:
                return self.get("/").status == 200
            except (OSError, ConnectionClosed):
                return False
        wait_for(serves, 10, interval=0.2, what="the restarted server to serve again")

    def test_passive_on_5xx(self):
        """on_5xx = true: a server answering 500 is open after `failures`
        answers; with on_5xx false (the default) a 500 is passed on and the
        breaker stays closed."""
        (good,) = self.start_backends("good")
        bad = PyServer("bad500", status=500)
        self.addCleanup(bad.stop)
        servers = [(good.addr, 1), (bad.addr, 1)]
        pools = [{"name": "strict", "servers": servers,
                  "passive_health": {"failures": 3, "on_5xx": True, "cooldown": "60s"}},
                 {"name": "lax", "servers": servers,
                  "passive_health": {"failures": 3, "cooldown": "60s"}}]
        self._lbd(pools, routes=[("*", "/s", "strict"), ("*", "/l", "lax")])
        st = [self.get("/s").status for _ in range(12)]
        self.assertEqual(st.count(500), 3, st)
        wait_breaker(self.admin, bad.addr, "open", pool="strict", timeout=5)
        self.assertEqual({self.get("/s").status for _ in range(10)}, {200})
        st = [self.get("/l").status for _ in range(12)]
        self.assertEqual(st.count(500), 6, st)
        s = find_server(admin_status(self.admin), bad.addr, "lax")
        self.assertEqual((s["health"], s["breaker"]), ("up", "closed"), s)

    # -- the whole story under load --------------------------------------------

    def test_backend_killed_under_load(self):
        """3 backends, 4 clients in a loop, one backend killed mid-load:
        once /status says it is DOWN, no request fails and none reaches it;
        /metrics shows lbd_backend_up 0 for it, 1 for the others."""
        bs = self.start_backends("b1", "b2", "b3")
        lbd = self._lbd([{"name": "web", "servers": [(b.addr, 1) for b in bs],
                          "health_check": HTTP_CHECK}])
        load = Load(lbd.listen, nthreads=4, max_seconds=60)
        try:
            load.wait_ok(200)
            kill_backend(bs[1])
            wait_health(self.admin, bs[1].addr, "down", reason="health_check")
            mark = time.monotonic()
            load.wait_ok(600, since=mark)
        finally:
            recs = load.stop()
        after = [r for r in recs if r[0] >= mark]
        bad = [r for r in after if r[2] != 200]
        self.assertEqual(bad[:5], [], f"{len(bad)} of {len(after)} requests failed after DOWN")
        self.assertNotIn("b2", {r[3] for r in after})
        self.assertEqual({r[3] for r in after}, {"b1", "b3"})
        m = admin_metrics(self.admin)
        self.assertEqual(m.value("lbd_backend_up", pool="web", server=bs[1].addr), 0)
        for b in (bs[0], bs[2]):
            self.assertEqual(m.value("lbd_backend_up", pool="web", server=b.addr), 1)
        self.assertGreater(m.value("lbd_health_checks_total", pool="web", server=bs[1].addr,
                                   result="failed"), 0)
