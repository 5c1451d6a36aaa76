"""The admin listener of the control process: /metrics (Prometheus text,
checked by promtool), /status (JSON); the control process's respawn and
restart on reload, with health state kept in shared memory."""
import json
import os
import re
import signal
import socket
import subprocess
import time

from lbdtest import HttpConn, LbdTestCase, connect, free_port, pid_alive, proc_title, wait_for
from lbdextra import (admin_get, admin_metrics, admin_metrics_text, admin_status,
                      control_pids, ext_config, find_server, kill_backend, run_requests, tally,
                      wait_control, wait_health)

PROMTOOL = "/usr/bin/promtool"

HTTP_CHECK = {"path": "/healthz", "interval": "300ms", "timeout": "200ms", "rise": 2, "fall": 2}

DOCUMENTED = {
    "lbd_build_info": "gauge",
    "lbd_backend_requests_total": "counter",
    "lbd_backend_responses_total": "counter",
    "lbd_backend_failures_total": "counter",
    "lbd_backend_active_requests": "gauge",
    "lbd_backend_up": "gauge",
    "lbd_backend_weight": "gauge",
    "lbd_health_checks_total": "counter",
    "lbd_request_duration_seconds": "histogram",
    "lbd_requests_total": "counter",
    "lbd_responses_total": "counter",
    "lbd_connections_total": "counter",
    "lbd_active_connections": "gauge",
    "lbd_timeouts_total": "counter",
    "lbd_worker_restarts_total": "counter",
    "lbd_config_reloads_total": "counter",
    "lbd_config_reload_failures_total": "counter",
    "lbd_fd_limit": "gauge",
    "lbd_worker_max_connections": "gauge",
    "lbd_accept_pauses_total": "counter",
    "lbd_admin_connections": "gauge",
    "lbd_admin_max_connections": "gauge",
    "lbd_admin_accept_pauses_total": "counter",
    "lbd_admin_timeouts_total": "counter",
}

SERVER_KEYS = {"address", "weight", "health", "down_reason", "drain", "in_flight", "ewma_ms",
               "requests", "failures", "responses", "checks"}
CHECK_KEYS = {"ok", "failed", "consecutive_successes", "consecutive_failures", "last_check_ms",
              "last_change_ms", "last_error"}
WORKER_KEYS = {"pid", "id", "state", "restarts", "connections", "requests"}


def listen_holders(addr, pids):
    """Those of PIDS with an fd on the listening TCP socket at ADDR
    ("127.0.0.1:port"), found through /proc/net/tcp and /proc/PID/fd."""
    port = int(addr.rsplit(":", 1)[1])
    inodes = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port:
                inodes.add(fields[9])
    holders = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                holders.append(pid)
                break
    return holders


class AdminTest(LbdTestCase):

    def _lbd(self, pools, workers=2, admin=None, routes=None):
        listen = f"127.0.0.1:{free_port()}"
        self.admin = admin or f"127.0.0.1:{free_port()}"
        self.cfg_args = dict(listen=listen, pools=pools, routes=routes, workers=workers)
        cfg = ext_config(listen, pools, routes=routes, workers=workers, admin=self.admin)
        return self.start_lbd(cfg, listen, workers=workers)

    def _config(self, admin, **over):
        a = dict(self.cfg_args)
        a.update(over)
        return ext_config(a["listen"], a["pools"], routes=a["routes"], workers=a["workers"],
                          admin=admin)

    # -- /metrics ---------------------------------------------------------------

    def test_metrics_promtool_and_counts(self):
        """After N requests (and one 404): lbd_backend_requests_total sums to
        N, so do the 2xx responses and the duration histogram's _count
        (buckets cumulative, +Inf == _count); every documented family is
        there with its type, and promtool's linter finds nothing."""
        bs = self.start_backends("b1", "b2", "b3")
        pools = [{"name": "web", "servers": [(b.addr, 1) for b in bs], "health_check": HTTP_CHECK}]
        lbd = self._lbd(pools, routes=[("*", "/app", "web")])
        n = 90
        # A connection per request: a known connection count (over
        # keep-alive connections it depends on how many of the client
        # threads got a request before the others took them all).
        per, bad = tally(run_requests(lbd.listen, [("/app?size=100", ())] * n, nthreads=3,
                                      new_conn=True))
        self.assertEqual(bad, [])
        self.assertEqual(self.get("/nowhere").status, 404)
        wait_for(lambda: all(find_server(admin_status(self.admin), b.addr)["checks"]["ok"] >= 1
                             for b in bs), 10, what="a passed check on each server")

        def settled():
            m = admin_metrics(self.admin)
            return m if m.sum("lbd_request_duration_seconds_count") == n else None
        m = wait_for(settled, 10, what=f"the duration histogram to count {n}")
        self.assertEqual(m.sum("lbd_backend_requests_total"), n)
        for b in bs:
            self.assertEqual(m.value("lbd_backend_requests_total", pool="web", server=b.addr), n / 3)
            self.assertEqual(m.value("lbd_backend_responses_total", pool="web", server=b.addr,
                                     code="2xx"), n / 3)
            self.assertEqual(m.value("lbd_backend_up", pool="web", server=b.addr), 1)
            self.assertEqual(m.value("lbd_backend_weight", pool="web", server=b.addr), 1)
            self.assertEqual(m.value("lbd_backend_failures_total", pool="web", server=b.addr), 0)
            self.assertGreaterEqual(m.value("lbd_health_checks_total", pool="web", server=b.addr,
                                            result="ok"), 1)
            self.assertEqual(m.value("lbd_health_checks_total", pool="web", server=b.addr,
                                     result="failed"), 0)
            # histogram: cumulative buckets ending in +Inf == _count
            buckets = m.select("lbd_request_duration_seconds_bucket", pool="web", server=b.addr)
            les = [float(lb["le"]) for lb, _ in buckets]
            vals = [v for _, v in buckets]
            self.assertEqual(les[-1], float("inf"))
            self.assertEqual(les, sorted(les))
            self.assertEqual(vals, sorted(vals), "buckets are cumulative")
            cnt = m.value("lbd_request_duration_seconds_count", pool="web", server=b.addr)
            self.assertEqual(vals[-1], cnt)
            self.assertEqual(cnt, n / 3)
        self.assertEqual(m.value("lbd_requests_total"), n + 1)
        self.assertEqual(m.value("lbd_responses_total", code="2xx"), n)
        self.assertEqual(m.value("lbd_responses_total", code="4xx"), 1)
        self.assertGreaterEqual(m.value("lbd_connections_total"), n + 1)
        self.assertEqual(m.value("lbd_config_reloads_total"), 0)
        self.assertEqual(m.value("lbd_config_reload_failures_total"), 0)
        self.assertEqual(m.value("lbd_build_info"), 1)
        self.assertEqual(len(m.select("lbd_worker_restarts_total")), 2)
        self.assertEqual(m.sum("lbd_worker_restarts_total"), 0)
        self.assertGreaterEqual(len(m.select("lbd_timeouts_total")), 1)
        for lb, _ in m.select("lbd_timeouts_total"):
            self.assertIn("kind", lb)
        for name, typ in DOCUMENTED.items():
            self.assertEqual(m.types.get(name), typ, f"# TYPE of {name}")
            if typ == "histogram":
                self.assertTrue(m.select(name + "_count"), name)
            else:
                self.assertTrue(m.select(name), f"{name} has samples")
        for name in m.names():
            self.assertTrue(name.startswith("lbd_"), name)

        text = admin_metrics_text(self.admin)
        r = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        out = r.stdout.decode(errors="replace").strip()
        self.assertEqual((r.returncode, out), (0, ""), "promtool check metrics")

    def test_duration_histogram_measures_requests(self):
        """lbd_request_duration_seconds, observed one request at a time: each
        of 15 requests the backend delays by 1 ms adds at least 1 ms to the
        _sum, and each of 15 immediate ones adds more than 0 (a real
        round trip through lbd and a backend never takes no time)."""
        a, b = self.start_backends("slow", "fast")
        pools = [{"name": "slow", "servers": [(a.addr, 1)]},
                 {"name": "fast", "servers": [(b.addr, 1)]}]
        self._lbd(pools, routes=[("*", "/", "fast"), ("*", "/slow", "slow")])

        def observed(pool, server, count):
            def probe():
                m = admin_metrics(self.admin)
                if m.value("lbd_request_duration_seconds_count", pool=pool, server=server) == count:
                    return (m.value("lbd_request_duration_seconds_sum", pool=pool, server=server),)
                return None
            return wait_for(probe, 10, what=f"{count} requests in the histogram of {pool}")[0]

        def one_by_one(target, pool, server):
            samples, last = [], 0.0
            for i in range(15):
                self.assertEqual(self.get(target).status, 200)
                total = observed(pool, server, i + 1)
                samples.append(round(total - last, 6))
                last = total
            return samples

        slow = one_by_one("/slow?delay=1", "slow", a.addr)
        self.assertEqual([x for x in slow if x < 0.000999], [],
                         f"requests delayed 1 ms recorded as shorter: {slow}")
        fast = one_by_one("/fast", "fast", b.addr)
        self.assertEqual([x for x in fast if x <= 0], [],
                         f"requests recorded as taking no time: {fast}")

    def test_metrics_promtool_catches_a_broken_exposition(self):
        """The promtool check can fail: a duplicated # TYPE line is caught."""
        text = "# HELP x_total x\n# TYPE x_total counter\n# TYPE x_total counter\nx_total 1\n"
        r = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        self.assertNotEqual((r.returncode, r.stdout.strip()), (0, b""))

    # -- /status ------------------------------------------------------------------

    def test_status_json(self):
        """/status is JSON with the documented fields, the same shape as
        `lbd -s`; its worker pids are the real worker processes."""
        bs = self.start_backends("b1", "b2")
        lbd = self._lbd([{"name": "web", "servers": [(bs[0].addr, 1), (bs[1].addr, 3)],
                          "health_check": HTTP_CHECK}], workers=3)
        for _ in range(8):
            self.assertEqual(self.get("/").status, 200)
        r = admin_get(self.admin, "/status")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("Content-Type"), "application/json")
        st = json.loads(r.body)
        snap = lbd.snapshot()
        self.assertEqual(set(st), set(snap), "same top-level keys as lbd -s")
        self.assertEqual(st["master_pid"], lbd.pid)
        real = lbd.worker_pids()
        self.assertEqual(len(real), 3)
        got = {w["id"]: w["pid"] for w in st["workers"] if w["state"] == "running"}
        self.assertEqual(got, real, "worker pids in /status are the real worker processes")
        for w in st["workers"]:
            self.assertTrue(WORKER_KEYS <= set(w), set(w))
            self.assertEqual(proc_title(w["pid"]), f"lbd: worker {w['id']}")
        self.assertEqual(sum(w["requests"] for w in st["workers"]), 8)
        self.assertIn("totals", st)
        self.assertEqual(st["totals"]["requests"], 8)
        (pool,) = st["pools"]
        self.assertEqual(pool["name"], "web")
        self.assertEqual([s["address"] for s in pool["servers"]], [b.addr for b in bs])
        self.assertEqual([s["weight"] for s in pool["servers"]], [1, 3])
        for s in pool["servers"]:
            self.assertTrue(SERVER_KEYS <= set(s), SERVER_KEYS - set(s))
            self.assertTrue(CHECK_KEYS <= set(s["checks"]), CHECK_KEYS - set(s["checks"]))
            self.assertEqual(set(s["responses"]), {"1xx", "2xx", "3xx", "4xx", "5xx"})
            self.assertEqual(s["health"], "up")
            self.assertEqual(s["down_reason"], "none")
            self.assertIs(s["drain"], False)
            self.assertEqual(s["in_flight"], 0)
            self.assertIsInstance(s["ewma_ms"], (int, float))
            self.assertEqual(s["failures"], 0)
            self.assertEqual(s["checks"]["last_error"], "")
        self.assertEqual(sum(s["requests"] for s in pool["servers"]), 8)
        self.assertEqual([s["requests"] for s in pool["servers"]], [4, 4], "round_robin")
        spool = snap["pools"][0]["servers"][0]
        self.assertEqual(set(spool), set(pool["servers"][0]), "server keys as in lbd -s")

    def test_unknown_path_and_methods(self):
        """Unknown paths are 404 (the connection then closes); a query string
        is ignored. (/ is the dashboard: test_dashboard.)"""
        self._lbd([{"name": "web", "servers": [(f"127.0.0.1:{free_port()}", 1)]}])
        for path in ("/index.html", "/nope", "/metricsx", "/status/x", "/STATUS"):
            r = admin_get(self.admin, path)
            self.assertEqual(r.status, 404, path)
        self.assertEqual(admin_get(self.admin, "/status?pretty=1").status, 200)
        self.assertEqual(admin_get(self.admin, "/metrics?x=y").status, 200)

    def test_head_status(self):
        """HEAD /status: 200, the headers, no body (the connection closes
        right after the head). Content-Length, if sent, is what GET would
        send (RFC 9110 8.6): not 0 for a body that is never empty."""
        self._lbd([{"name": "web", "servers": [(f"127.0.0.1:{free_port()}", 1)]}])
        for path, ctype in (("/status", "application/json"), ("/metrics", "text/plain")):
            with HttpConn(self.admin) as c:
                r = c.request(path, method="HEAD")
                rest = c.read_until_eof()
            self.assertEqual(r.status, 200, path)
            self.assertTrue((r.header("Content-Type") or "").startswith(ctype), r.headers)
            self.assertEqual(rest, b"", f"HEAD {path} carries no body")
            get_len = len(admin_get(self.admin, path).body)
            self.assertGreater(get_len, 0)
            cl = r.header("Content-Length")
            if cl is not None:
                self.assertGreater(int(cl), 0,
                                   f"HEAD {path}: Content-Length {cl}, GET sends {get_len} bytes")

    # -- the control process --------------------------------------------------------

    def _down_setup(self, check=None):
        bs = self.start_backends("b1", "b2", "b3")
        check = check or {"path": "/healthz", "interval": "500ms", "timeout": "200ms",
                          "rise": 2, "fall": 3}
        lbd = self._lbd([{"name": "web", "servers": [(b.addr, 1) for b in bs],
                          "health_check": check}])
        kill_backend(bs[1])
        wait_health(self.admin, bs[1].addr, "down", reason="health_check")
        return lbd, bs

    def test_control_respawned_after_kill9_health_survives(self):
        """kill -9 of the control process: the master logs it and respawns
        it (new pid, a child titled 'lbd: control'), /metrics answers again,
        and a DOWN server is still DOWN in the new control's very first
        answer (health state is in shared memory; checks counters go on);
        requests keep avoiding it."""
        getattr(self, "expect_worker_deaths", lambda: None)()   # the log says "respawning"
        lbd, bs = self._down_setup()
        (ctl,) = control_pids(lbd)
        before = find_server(admin_status(self.admin), bs[1].addr)
        off = lbd.log_size()
        os.kill(ctl, signal.SIGKILL)
        # The listening socket is the master's: this waits in its backlog
        # until the new control process accepts it.
        first = find_server(admin_status(self.admin), bs[1].addr)
        self.assertEqual((first["health"], first["down_reason"]), ("down", "health_check"), first)
        self.assertGreaterEqual(first["checks"]["failed"], before["checks"]["failed"])
        lbd.wait_log(r"control process killed by signal 9.*respawning", since=off)
        new = wait_control(lbd, not_pid=ctl)
        self.assertNotEqual(new, ctl)
        self.assertFalse(pid_alive(ctl))
        self.assertEqual(proc_title(new), "lbd: control")
        m = admin_metrics(self.admin)
        self.assertEqual(m.value("lbd_backend_up", pool="web", server=bs[1].addr), 0)
        self.assertEqual(m.value("lbd_backend_up", pool="web", server=bs[0].addr), 1)
        # the new control keeps checking: failed checks keep counting
        wait_for(lambda: find_server(admin_status(self.admin), bs[1].addr)["checks"]["failed"] >=
                 first["checks"]["failed"] + 2, 10, what="the new control to check")
        per, bad = tally(run_requests(lbd.listen, [("/", ())] * 60, nthreads=3))
        self.assertEqual(bad, [])
        self.assertEqual(set(per), {"b1", "b3"})
        self.assertEqual(lbd.snapshot()["totals"]["worker_restarts"], 0, "workers untouched")

    def test_stop_with_control_respawn_pending_does_not_spin(self):
        """A graceful stop while the control process's respawn waits out its
        backoff: nothing respawns during a stop, and the master sleeps until
        its worker has drained (it used to wake without pause once the
        respawn was due: a core at 100 % for the whole drain)."""
        self.expect_worker_deaths()     # the log says "respawning"
        (b,) = self.start_backends("b1")
        lbd = self._lbd([{"name": "web", "servers": [(b.addr, 1)]}], workers=1)
        # Crashes within 2 s of a start back off: 100, 200, 400, 800 ms.
        ctl = wait_control(lbd)
        delay = 0
        for _ in range(6):
            off = lbd.log_size()
            os.kill(ctl, signal.SIGKILL)
            m = lbd.wait_log(r"control process killed by signal 9.*; respawning in (\d+) ms",
                             since=off)
            delay = int(m.group(1))
            if delay >= 800:
                break
            ctl = wait_control(lbd, not_pid=ctl)
        self.assertGreaterEqual(delay, 800, "the control's respawn never backed off")
        slow = HttpConn(lbd.listen, timeout=30)
        self.addCleanup(slow.close)
        slow.send(b"GET /?delay=4000 HTTP/1.1\r\nHost: lbd.test\r\n\r\n")
        lbd.wait_in_flight(1)
        lbd.signal(signal.SIGTERM)

        def cpu_ticks():
            with open(f"/proc/{lbd.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return int(fields[11]) + int(fields[12])     # utime + stime
        # The respawn falls due inside this window; the request is still on.
        before = cpu_ticks()
        end = time.monotonic() + 2.5
        while time.monotonic() < end and lbd.alive():
            time.sleep(0.1)
        used = cpu_ticks() - before
        hz = os.sysconf("SC_CLK_TCK")
        self.assertLess(used, hz // 2, f"the master used {used} ticks of CPU in 2.5 s of drain")
        r = slow.read_response()
        self.assertEqual(r.status, 200, r)
        self.assertEqual(lbd.wait_exit(15), 0, lbd.log()[-2000:])
        lbd.exit_checked = True
        self.assertEqual(control_pids(lbd), [])

    def test_reload_restarts_control_health_survives(self):
        """SIGHUP: a new control process with the new configuration; the
        DOWN server is DOWN in its first answer and stays DOWN, requests
        avoid it; the old control process exits."""
        lbd, bs = self._down_setup()
        (ctl,) = control_pids(lbd)
        before = find_server(admin_status(self.admin), bs[1].addr)
        lbd.reload(self._config(self.admin, workers=3))
        first = find_server(admin_status(self.admin), bs[1].addr)
        self.assertEqual((first["health"], first["down_reason"]), ("down", "health_check"), first)
        self.assertGreaterEqual(first["checks"]["failed"], before["checks"]["failed"])
        new = wait_control(lbd, not_pid=ctl)
        wait_for(lambda: not pid_alive(ctl), 10, what="the old control process to exit")
        st = admin_status(self.admin)
        self.assertEqual(st["generation"], 2)
        self.assertEqual(len([w for w in st["workers"] if w["state"] == "running"]), 3)
        self.assertNotEqual(new, ctl)
        per, bad = tally(run_requests(lbd.listen, [("/", ())] * 60, nthreads=3))
        self.assertEqual(bad, [])
        self.assertEqual(set(per), {"b1", "b3"})
        self.assertEqual(find_server(admin_status(self.admin), bs[1].addr)["health"], "down")
        self.assertEqual(admin_metrics(self.admin).value("lbd_config_reloads_total"), 1)

    # -- the admin address --------------------------------------------------------

    def test_admin_address_in_use_refuses_to_start(self):
        """Someone else listens on the admin address: lbd exits 1 and says why."""
        busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen(8)
        admin = f"127.0.0.1:{busy.getsockname()[1]}"
        listen = f"127.0.0.1:{free_port()}"
        cfg = ext_config(listen, [{"name": "web", "servers": [(f"127.0.0.1:{free_port()}", 1)]}],
                         admin=admin)
        lbd = self.start_lbd(cfg, listen, wait=False)
        rc = lbd.wait_exit(15)
        lbd.exit_checked = True
        self.assertEqual(rc, 1, lbd.log())
        self.assertRegex(lbd.log(), r"admin address .*" + re.escape(admin))
        with self.assertRaises(OSError):
            connect(listen, timeout=2).close()

    def test_reload_moves_admin(self):
        """Reload with a new admin address: it answers there, the old one
        stops accepting; a reload to an address in use fails and the admin
        listener stays where it was."""
        lbd = self._lbd([{"name": "web", "servers": [(f"127.0.0.1:{free_port()}", 1)]}])
        old = self.admin
        self.assertEqual(admin_status(old)["generation"], 1)
        new = f"127.0.0.1:{free_port()}"
        lbd.reload(self._config(new))
        self.assertEqual(admin_status(new)["generation"], 2)
        # Only the master and the control process hold the admin socket: a
        # worker that kept it would keep it listening while it drains.
        workers = [w["pid"] for w in lbd.running_workers()]
        self.assertEqual(listen_holders(new, workers), [], "workers hold the admin socket")

        def old_refused():
            try:
                connect(old, timeout=2).close()
            except ConnectionRefusedError:
                return True
            return False
        wait_for(old_refused, 10, what="the old admin address to refuse connections")
        self.assertEqual(admin_metrics(new).value("lbd_config_reloads_total"), 1)

        busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen(8)
        off = lbd.log_size()
        lbd.reload(self._config(f"127.0.0.1:{busy.getsockname()[1]}"), expect_ok=False)
        lbd.wait_log(r"reload failed.*admin address", since=off)
        st = admin_status(new)
        self.assertEqual((st["generation"], st["reload_failures"]), (2, 1))
        self.assertEqual(admin_metrics(new).value("lbd_config_reload_failures_total"), 1)
