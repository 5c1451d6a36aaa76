"""Rate limiting (README "Rate limiting"): token and leaky buckets shared
exactly by all workers, the RateLimit fields, dry runs, connections per
client address, a table under many keys, buckets kept over reloads and
worker restarts, configuration errors, /metrics; fleet limits shared by two
instances through a redis-server of the test's own, and what happens when
that redis dies or stalls.

Client addresses: the whole of 127.0.0.0/8 is loopback, so each test's
clients bind their own 127.0.0.x source address and are separate keys.
Counts, not times, are asserted: where a rate is measured, the expected
count comes from the client's own clock over the run.
"""
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time

from lbdtest import (HttpConn, LbdTestCase, _cfg_value, _set_pdeathsig, free_port, sanitized,
                     wait_for)
from lbdextra import Metrics, admin_metrics_text, admin_status

PROMTOOL = "/usr/bin/promtool"


def rl_config(listen, backends, limits, routes, workers=2, extra="", listener=None,
              admin=None):
    """LIMITS: dicts rendered as rate_limits groups. ROUTES: (path_prefix,
    [limit names]) over one pool 'web' of BACKENDS. LISTENER: extra keys
    (steering = "kernel" unless given)."""
    lines = [f"workers = {workers};", 'log_level = "info";', 'shutdown_timeout = "10s";',
             'timeouts = { client_idle = "30s"; client_header = "10s"; backend_response = "10s"; };']
    # The kernel's hash, as lbdtest's configs: the floods below come from one
    # address and must reach every worker.
    listener = dict(listener or {})
    listener.setdefault("steering", "kernel")
    more = "".join(f" {k} = {_cfg_value(v)};" for k, v in listener.items())
    lines.append(f'listeners = ( {{ address = "{listen}";{more} }} );')
    srv = ", ".join(f'{{ address = "{b.addr}"; }}' for b in backends)
    lines.append(f'pools = ( {{ name = "web"; servers = ( {srv} ); }} );')
    if limits:
        lines.append("rate_limits = (\n  " + ",\n  ".join(_cfg_value(l) for l in limits) + "\n);")
    rs = []
    for prefix, names in routes:
        lim = ""
        if names:
            lim = " rate_limits = [ " + ", ".join(f'"{n}"' for n in names) + " ];"
        rs.append(f'  {{ path_prefix = "{prefix}"; pool = "web";{lim} }}')
    lines.append("routes = (\n" + ",\n".join(rs) + "\n);")
    if admin:
        lines.append(f'admin = {{ address = "{admin}"; }};')
    if extra:
        lines.append(extra)
    return "\n".join(lines) + "\n"


def limit_stats(snap, name):
    found = [l for l in snap["rate_limits"] if l["name"] == name]
    assert len(found) == 1, (name, snap["rate_limits"])
    return found[0]


def fields(resp):
    """(RateLimit-Policy, RateLimit) of a response, or None each."""
    return resp.header("RateLimit-Policy"), resp.header("RateLimit")


class RateLimitTestCase(LbdTestCase):
    def start(self, limits, routes, workers=2, listener=None, extra="", admin=None):
        self.backend = self.start_backend("b1")
        port = free_port()
        self.listen = f"127.0.0.1:{port}"
        cfg = rl_config(self.listen, [self.backend], limits, routes, workers=workers,
                        extra=extra, listener=listener, admin=admin)
        self.config_text = cfg
        return self.start_lbd(cfg, self.listen, workers=workers)

    def request(self, target="/", source=None, headers=()):
        with HttpConn(self.listen, timeout=15, source=source) as c:
            return c.request(target, headers=headers)

    def access_log(self):
        with open(self.path("access.log")) as f:
            return f.read()


class TestExact(RateLimitTestCase):
    def test_flood_over_four_workers_admits_the_rate(self):
        """One client address floods a 50r/s, burst 10 limit for 3 s over
        16 connections spread over 4 workers: admitted = 50 x elapsed +
        burst + 1 within 2 % (+2 for rounding), not four times that, while
        a second address at 20 r/s is refused nothing. Fails without
        limits, and with buckets per worker."""
        self.start([{"name": "per_ip", "rate": "50r/s", "burst": 10}], [("/", ["per_ip"])],
                   workers=4)
        statuses = {}
        lock = threading.Lock()
        span = [None, None]         # first send, last answer (client clock)
        stop_at = time.monotonic() + 3.0
        errors = []

        def flood():
            try:
                with HttpConn(self.listen, timeout=15, source="127.0.0.2") as c:
                    while time.monotonic() < stop_at:
                        t0 = time.monotonic()
                        r = c.request("/")
                        t1 = time.monotonic()
                        with lock:
                            statuses[r.status] = statuses.get(r.status, 0) + 1
                            if span[0] is None or t0 < span[0]:
                                span[0] = t0
                            if span[1] is None or t1 > span[1]:
                                span[1] = t1
                            if r.status == 429 and r.header("Retry-After") is None:
                                errors.append("429 without Retry-After")
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))

        other = []

        def polite():
            try:
                with HttpConn(self.listen, timeout=15, source="127.0.0.3") as c:
                    for _ in range(40):
                        other.append(c.request("/").status)
                        time.sleep(0.05)
            except Exception as e:  # noqa: BLE001
                errors.append("second client: " + repr(e))

        threads = [threading.Thread(target=flood) for _ in range(16)]
        threads.append(threading.Thread(target=polite))
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])
        self.assertEqual(set(statuses) - {200, 429}, set(), statuses)
        admitted = statuses.get(200, 0)
        elapsed = span[1] - span[0]
        expected = 50 * elapsed + 10 + 1
        total = admitted + statuses.get(429, 0)
        self.assertGreater(total, 10 * expected, f"not a flood: {statuses} in {elapsed:.2f}s")
        self.assertLessEqual(abs(admitted - expected), 0.02 * expected + 2,
                             f"admitted {admitted}, expected {expected:.1f} "
                             f"(50r/s x {elapsed:.3f}s + 11); {statuses}")
        if os.environ.get("LBD_DEBUG_RATE"):
            print(f"\n    admitted {admitted} of {total} in {elapsed:.3f}s, expected {expected:.1f}")
        self.assertEqual(other, [200] * 40, "the second address was limited")
        snap = self.lbd.snapshot()
        busy = [w for w in snap["workers"] if w["state"] == "running" and w["requests"] > 0]
        self.assertGreaterEqual(len(busy), 2, "the flood reached one worker only")
        st = limit_stats(snap, "per_ip")
        self.assertEqual(st["requests"]["allowed"], admitted + 40)
        self.assertEqual(st["requests"]["limited"], statuses.get(429, 0))
        self.assertEqual(st["keys"], 2)
        self.assertEqual(self.backend.stats()["requests"] - 1, admitted + 40)


class TestLeakyBucket(RateLimitTestCase):
    def test_delays_then_refuses(self):
        """1r/s, burst 3, delay 0: the first request passes, the next three
        are held and released a second apart (the worker serves others
        meanwhile), the fifth is refused. One worker."""
        self.start([{"name": "lk", "rate": "1r/s", "burst": 3, "algorithm": "leaky_bucket"}],
                   [("/", ["lk"]), ("/free", [])], workers=1,
                   extra=f'access_log = "{self.path("access.log")}";')
        first = self.request("/", source="127.0.0.4")
        self.assertEqual(first.status, 200)
        held = [HttpConn(self.listen, timeout=15, source="127.0.0.4") for _ in range(3)]
        for c in held:
            c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        # The held requests reach lbd before the fifth: wait until counted.
        wait_for(lambda: limit_stats(self.lbd.snapshot(), "lk")["requests"]["delayed"] == 3,
                 what="three requests held")
        refused = self.request("/", source="127.0.0.4")
        self.assertEqual(refused.status, 429)
        free = self.request("/free", source="127.0.0.4")
        self.assertEqual(free.status, 200)
        # Served while the last held one (3 s) still waits.
        held[2].sock.setblocking(False)
        try:
            early = held[2].sock.recv(1)
        except BlockingIOError:
            early = None
        held[2].sock.setblocking(True)
        self.assertIsNone(early, "the last held request was answered before /free")
        for c in held:
            self.assertEqual(c.read_response().status, 200)
            c.close()
        st = limit_stats(self.lbd.snapshot(), "lk")["requests"]
        self.assertEqual(st, {"allowed": 1, "delayed": 3, "limited": 1, "dry_run": 0})
        log = wait_for(lambda: self.access_log().count(" limited=") == 4 and self.access_log(),
                       what="four marked access log lines")
        self.assertEqual(len(re.findall(r" limited=lk:delayed=\d+ms$", log, re.M)), 3, log)
        self.assertEqual(len(re.findall(r'"GET / HTTP/1.1" 429 .* limited=lk$', log, re.M)), 1, log)

    def test_client_leaving_while_held(self):
        """A held request whose client closes is dropped cleanly; the
        worker lives on (and sanitizers, under make asan, stay quiet)."""
        self.start([{"name": "lk", "rate": "2r/s", "burst": 5, "algorithm": "leaky_bucket",
                     "delay": 1}], [("/", ["lk"])], workers=1)
        conns = [HttpConn(self.listen, timeout=15, source="127.0.0.9") for _ in range(5)]
        for c in conns:
            c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_for(lambda: limit_stats(self.lbd.snapshot(), "lk")["requests"]["delayed"] == 3,
                 what="three requests held (two passed at once: delay = 1)")
        for c in conns[2:]:
            c.sock.shutdown(socket.SHUT_RDWR)
            c.close()
        for c in conns[:2]:
            self.assertEqual(c.read_response().status, 200)
            c.close()
        wait_for(lambda: self.lbd.snapshot()["totals"]["active_connections"] == 0,
                 what="the held connections to end")
        self.assertEqual(self.request("/", source="127.0.0.10").status, 200)


class TestHeaders(RateLimitTestCase):
    def test_fields_on_admitted_and_refused(self):
        """3r/m, burst 2, headers = true: r counts down, t is the seconds
        until the bucket is full; the refusal has Retry-After and r=0 with
        t = Retry-After. A limit's status replaces 429. Without headers,
        admitted responses carry no fields."""
        self.start([{"name": "h", "rate": "3r/m", "burst": 2, "headers": True},
                    {"name": "s", "rate": "1r/m", "status": 503},
                    {"name": "quiet", "rate": "10r/s"}],
                   [("/", ["h"]), ("/s", ["s"]), ("/q", ["quiet"])])
        got = []
        for _ in range(3):
            r = self.request("/", source="127.0.0.5")
            self.assertEqual(r.status, 200)
            got.append(fields(r))
        self.assertEqual(got, [('"h";q=3;w=60', '"h";r=2;t=20'),
                               ('"h";q=3;w=60', '"h";r=1;t=40'),
                               ('"h";q=3;w=60', '"h";r=0;t=60')])
        r = self.request("/", source="127.0.0.5")
        self.assertEqual((r.status, r.reason), (429, "Too Many Requests"))
        self.assertEqual(r.header("Retry-After"), "20")
        self.assertEqual(fields(r), ('"h";q=3;w=60', '"h";r=0;t=20'))
        self.assertEqual(r.header("Connection"), None, "a refusal keeps the connection")

        self.assertEqual(self.request("/s", source="127.0.0.5").status, 200)
        r = self.request("/s", source="127.0.0.5")
        self.assertEqual(r.status, 503)
        self.assertEqual(r.header("Retry-After"), "60")
        self.assertEqual(fields(r), ('"s";q=1;w=60', '"s";r=0;t=60'))

        r = self.request("/q", source="127.0.0.5")
        self.assertEqual((r.status, fields(r)), (200, (None, None)))

    def test_all_limits_apply_and_a_refusal_gives_tokens_back(self):
        """Two limits on a route: both fields on an admitted response; the
        second refusing gives the first its token back."""
        self.start([{"name": "a", "rate": "1r/m", "burst": 5, "headers": True},
                    {"name": "b", "rate": "1r/m", "headers": True}],
                   [("/", ["a", "b"]), ("/a", ["a"])])
        r = self.request("/", source="127.0.0.6")
        self.assertEqual(r.status, 200)
        self.assertEqual(fields(r), ('"a";q=1;w=60, "b";q=1;w=60', '"a";r=5;t=60, "b";r=0;t=60'))
        for _ in range(3):
            r = self.request("/", source="127.0.0.6")
            self.assertEqual(r.status, 429)
            self.assertEqual(fields(r), ('"b";q=1;w=60', '"b";r=0;t=60'))
        r = self.request("/a", source="127.0.0.6")
        self.assertEqual(r.status, 200)
        self.assertEqual(fields(r)[1], '"a";r=4;t=120', "refused requests took tokens of 'a'")

    def test_header_key_and_forwarded_client(self):
        """key = header:X-Api-Key: each value its bucket, no header no
        limit. key = client_ip behind a trusted proxy: the client named by
        X-Forwarded-For (past trusted hops), not the proxy."""
        self.start([{"name": "k", "key": "header:X-Api-Key", "rate": "1r/m"},
                    {"name": "ip", "rate": "1r/m"}],
                   [("/", ["k"]), ("/ip", ["ip"])],
                   extra='trusted_proxies = [ "127.0.0.11", "10.0.0.0/8" ];')
        self.assertEqual(self.request("/", headers=[("X-Api-Key", "one")]).status, 200)
        self.assertEqual(self.request("/", headers=[("x-api-key", "one")]).status, 429)
        self.assertEqual(self.request("/", headers=[("X-Api-Key", "two")]).status, 200)
        for _ in range(3):
            self.assertEqual(self.request("/").status, 200)
        via = "127.0.0.11"
        xff = [("X-Forwarded-For", "192.0.2.1, 10.1.2.3")]
        self.assertEqual(self.request("/ip", source=via, headers=xff).status, 200)
        self.assertEqual(self.request("/ip", source=via, headers=xff).status, 429)
        self.assertEqual(self.request("/ip", source=via,
                                      headers=[("X-Forwarded-For", "192.0.2.2")]).status, 200)
        # An untrusted peer's X-Forwarded-For says nothing: its own address counts.
        self.assertEqual(self.request("/ip", source="127.0.0.12", headers=xff).status, 200)
        self.assertEqual(self.request("/ip", source="127.0.0.12",
                                      headers=[("X-Forwarded-For", "192.0.2.3")]).status, 429)


class TestDryRun(RateLimitTestCase):
    def test_counts_and_logs_refuses_nothing(self):
        self.start([{"name": "d", "rate": "1r/m", "dry_run": True}], [("/", ["d"])],
                   extra=f'access_log = "{self.path("access.log")}";')
        for _ in range(10):
            self.assertEqual(self.request("/", source="127.0.0.7").status, 200)
        st = limit_stats(self.lbd.snapshot(), "d")
        self.assertEqual(st["requests"], {"allowed": 1, "limited": 0, "delayed": 0, "dry_run": 9})
        self.assertTrue(st["dry_run"])
        log = wait_for(lambda: self.access_log().count(" limited=d:dry_run") == 9 and self.access_log(),
                       what="nine dry-run marks in the access log")
        self.assertEqual(log.count("\n"), 10)
        lines = re.findall(r"rate limit 'd' \(dry run\) would refuse client 127\.0\.0\.7", self.lbd.log())
        self.assertGreaterEqual(len(lines), 1)
        self.assertLessEqual(len(lines), 3, "more than once a second")
        self.assertEqual(self.backend.stats()["requests"] - 1, 10)


class TestConnections(RateLimitTestCase):
    def test_max_connections_per_ip(self):
        """max_connections_per_ip = 3 over 2 workers: a fourth connection
        from the address is closed at accept and counted; another address
        is not concerned; closing one lets the next in."""
        self.start([], [("/", [])], listener={"max_connections_per_ip": 3})
        held = []
        for _ in range(3):
            c = HttpConn(self.listen, timeout=15, source="127.0.0.8")
            self.assertEqual(c.request("/").status, 200)
            held.append(c)
        with HttpConn(self.listen, timeout=15, source="127.0.0.8") as c:
            try:
                c.send(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                got = c.read_until_eof()
            except ConnectionResetError:
                got = b""
            self.assertEqual(got, b"", "a fourth connection was served")
        snap = self.lbd.snapshot()
        self.assertEqual(snap["totals"]["connections_limited"], 1)
        self.assertEqual(self.request("/", source="127.0.0.13").status, 200)
        held.pop().close()

        def fourth_served():
            try:
                with HttpConn(self.listen, timeout=15, source="127.0.0.8") as c:
                    return c.request("/").status == 200
            except (ConnectionError, OSError, ValueError):
                return False
        wait_for(fourth_served, what="a connection once one was closed")
        for c in held:
            self.assertEqual(c.request("/").status, 200)
            c.close()


class TestManyKeys(RateLimitTestCase):
    def test_200k_keys_keep_memory_flat(self):
        """200,000 distinct header keys through a table of 1,000: the
        worker's RSS stays flat, evictions are counted, keys stay at most
        the table size. Pipelined over keep-alive connections, bounded in
        time."""
        self.start([{"name": "k", "key": "header:X-K", "rate": "1r/m"}], [("/", ["k"])],
                   workers=1, extra="rate_limit_table_size = 1000;")
        (wpid,) = self.lbd.worker_pids().values()
        deadline = time.monotonic() + 240
        sent = [0]

        def run(first, count, nconn=4, batch=400):
            per = count // nconn
            errors = []

            def one(base):
                with HttpConn(self.listen, timeout=30) as c:
                    done = 0
                    while done < per and time.monotonic() < deadline:
                        n = min(batch, per - done)
                        c.send(b"".join(b"GET / HTTP/1.1\r\nHost: t\r\nX-K: k%d\r\n\r\n"
                                        % (base + done + i) for i in range(n)))
                        got = 0
                        while got < n:
                            if not c._fill():
                                errors.append("closed")
                                return
                            got = c.buf.count(b"HTTP/1.1 200 ")
                        if c.buf.count(b"HTTP/1.1 ") != n:
                            errors.append("not all 200")
                            return
                        c.buf.clear()
                        done += n
                    with lock:
                        sent[0] += done
            lock = threading.Lock()
            ts = [threading.Thread(target=one, args=(first + k * per,)) for k in range(nconn)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(300)
            self.assertEqual(errors, [])

        def rss_kib():
            with open(f"/proc/{wpid}/status") as f:
                return int(re.search(r"^VmRSS:\s+(\d+)", f.read(), re.M).group(1))

        run(0, 20000)           # warm-up: buffers, free lists, the table
        before = rss_kib()
        run(1000000, 200000)
        after = rss_kib()
        self.assertEqual(sent[0], 220000, "the run did not finish in time")
        st = limit_stats(self.lbd.snapshot(), "k")
        self.assertLessEqual(st["keys"], 1000)
        self.assertGreaterEqual(st["keys"], 500)
        self.assertGreaterEqual(st["evictions"], 220000 - 1000)
        self.assertEqual(st["requests"]["allowed"], 220000)
        if os.environ.get("LBD_DEBUG_RATE"):
            print(f"\n    worker VmRSS {before} -> {after} KiB; {st}")
        # Under AddressSanitizer freed memory sits in a 256 MiB quarantine:
        # RSS says nothing about lbd there (test_http's RSS tests likewise).
        if not sanitized(self.lbd_bin):
            self.assertLess(after - before, 2048, f"worker RSS grew from {before} to {after} KiB")


class TestReload(RateLimitTestCase):
    def test_buckets_survive_reload_and_worker_restart(self):
        """Same name and signature: a reload (here changing only the status)
        and a worker's death keep the bucket; a changed rate starts afresh."""
        self.expect_worker_deaths()
        limit = {"name": "r", "rate": "1r/m", "burst": 1}
        self.start([limit], [("/", ["r"])], workers=1)
        src = "127.0.0.14"
        self.assertEqual([self.request("/", source=src).status for _ in range(3)], [200, 200, 429])
        self.lbd.reload(self.config_text.replace("burst = 1;", "burst = 1; status = 503;"))
        self.assertEqual(self.request("/", source=src).status, 503)
        (wpid,) = self.lbd.worker_pids().values()
        os.kill(wpid, 9)
        wait_for(lambda: set(self.lbd.worker_pids().values()) - {wpid}, what="a new worker")
        self.lbd.wait_ready(1)
        self.assertEqual(self.request("/", source=src).status, 503, "state lost with the worker")
        self.lbd.reload(self.config_text.replace('"1r/m"', '"2r/m"'))
        self.assertEqual(self.request("/", source=src).status, 200, "new rate, new buckets")

    def test_bad_limits_refused_at_check_and_reload(self):
        self.start([{"name": "r", "rate": "1r/s"}], [("/", ["r"])])
        bad = self.config_text.replace('"1r/s"', '"10/s"')
        path = self.write_file(self.path("bad.conf"), bad)
        r = subprocess.run([self.lbd_bin, "-t", "-c", path], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=30)
        line = bad[:bad.index('"10/s"')].count("\n") + 1
        self.assertEqual(r.returncode, 1)
        self.assertIn(f"bad.conf:{line}: bad rate \"10/s\"", r.stdout.decode())
        since = self.lbd.log_size()
        self.lbd.reload(bad, expect_ok=False)
        self.lbd.wait_log(rf"lbd.conf:{line}: bad rate", since=since)
        fleet = self.config_text.replace('rate = "1r/s";', 'rate = "1r/s"; scope = "fleet";')
        self.lbd.reload(fleet, expect_ok=False)
        self.lbd.wait_log(r"needs a redis group", since=since)
        self.assertEqual(self.request("/").status, 200)


class TestVisibility(RateLimitTestCase):
    def test_metrics_and_status(self):
        admin = f"127.0.0.1:{free_port()}"
        self.start([{"name": "m", "rate": "1r/m", "burst": 1},
                    {"name": "dr", "key": "global", "rate": "1r/m", "dry_run": True}],
                   [("/", ["m", "dr"])], admin=admin, listener={"max_connections_per_ip": 50})
        for _ in range(4):
            self.request("/", source="127.0.0.15")
        st = admin_status(admin)
        m = limit_stats(st, "m")
        self.assertEqual((m["key"], m["rate"], m["burst"], m["algorithm"], m["table_size"]),
                         ("client_ip", "1r/m", 1, "token_bucket", 100000))
        self.assertEqual(m["requests"], {"allowed": 2, "limited": 2, "delayed": 0, "dry_run": 0})
        text = admin_metrics_text(admin)
        mt = Metrics(text)
        self.assertEqual(mt.value("lbd_ratelimit_requests_total", limit="m", result="allowed"), 2)
        self.assertEqual(mt.value("lbd_ratelimit_requests_total", limit="m", result="limited"), 2)
        # Refused by m, the later ones never reach dr; the second reaches it
        # and would be refused.
        self.assertEqual(mt.value("lbd_ratelimit_requests_total", limit="dr", result="dry_run"), 1)
        self.assertEqual(mt.value("lbd_ratelimit_keys", limit="m"), 1)
        self.assertEqual(mt.value("lbd_ratelimit_evictions_total", limit="m"), 0)
        self.assertEqual(mt.value("lbd_ratelimit_table_size", limit="m"), 100000)
        self.assertEqual(mt.value("lbd_connections_limited_total"), 0)
        for name, typ in (("lbd_ratelimit_requests_total", "counter"),
                          ("lbd_ratelimit_evictions_total", "counter"),
                          ("lbd_ratelimit_keys", "gauge"),
                          ("lbd_connections_limited_total", "counter")):
            self.assertEqual(mt.types.get(name), typ, name)
        r = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        out = r.stdout.decode(errors="replace").strip()
        self.assertEqual((r.returncode, out), (0, ""), "promtool check metrics")
        self.assertEqual(st["rate_limits"], self.lbd.snapshot()["rate_limits"])


# ---------------------------------------------------------------------------
# fleet limits: redis shared by several instances

REDIS_SERVER = "/usr/bin/redis-server"


class Redis:
    """A redis-server of the test's own, on a loopback port, no persistence."""

    def __init__(self, tc, port=None):
        if not os.access(REDIS_SERVER, os.X_OK):
            tc.fail("redis-server not found (make deps installs it)")
        self.port = port or free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.log = open(os.path.join(tc.tmp, f"redis-{self.port}.log"), "ab")
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tc.tmp],
            stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL,
            preexec_fn=_set_pdeathsig)
        wait_for(self.ping, what=f"redis on {self.addr}")

    def ping(self):
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


class TestFleet(RateLimitTestCase):
    def start_fleet(self, limit, n=2, workers=2):
        self.redis = Redis(self)
        self.addCleanup(self.redis.stop)
        self.backend = self.start_backend("b1")
        extra = f'redis = {{ address = "{self.redis.addr}"; timeout = "200ms"; }};'
        lbds = []
        for i in range(n):
            listen = f"127.0.0.1:{free_port()}"
            cfg = rl_config(listen, [self.backend], [limit], [("/", [limit["name"]])],
                            workers=workers, extra=extra)
            lbds.append(self.start_lbd(cfg, listen, workers=workers, name=f"lbd{i}.conf"))
        # Every worker on redis (all instances log to the test's one stderr).
        wait_for(lambda: len(re.findall(r"redis \S+ (connected|answers again)", lbds[0].log()))
                 == n * workers, what="every worker connected to redis")
        return lbds

    def errors(self, l):
        return l.snapshot()["totals"]["ratelimit_redis_errors"]

    def test_two_instances_share_one_limit(self):
        """Two instances of 2 workers, one fleet limit of 20r/s burst 5, one
        address flooding both for 2 s: admitted = 20 x elapsed + 6 over
        both (within 5 % + 3), not twice that. Fails with local limits."""
        lbds = self.start_fleet({"name": "fl", "rate": "20r/s", "burst": 5, "scope": "fleet"})
        statuses, span, errors = {}, [None, None], []
        lock = threading.Lock()
        stop_at = time.monotonic() + 2.0

        def flood(l):
            try:
                with HttpConn(l.listen, timeout=15, source="127.0.0.20") as c:
                    while time.monotonic() < stop_at:
                        t0 = time.monotonic()
                        r = c.request("/")
                        t1 = time.monotonic()
                        with lock:
                            statuses[r.status] = statuses.get(r.status, 0) + 1
                            span[0] = t0 if span[0] is None else min(span[0], t0)
                            span[1] = t1 if span[1] is None else max(span[1], t1)
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))

        threads = [threading.Thread(target=flood, args=(lbds[k % 2],)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])
        self.assertEqual(set(statuses) - {200, 429}, set(), statuses)
        admitted = statuses.get(200, 0)
        elapsed = span[1] - span[0]
        expected = 20 * elapsed + 6
        if os.environ.get("LBD_DEBUG_RATE"):
            print(f"\n    fleet: admitted {admitted} of {sum(statuses.values())} "
                  f"in {elapsed:.3f}s, expected {expected:.1f}")
        self.assertLessEqual(abs(admitted - expected), 0.05 * expected + 3,
                             f"admitted {admitted}, expected {expected:.1f}: {statuses}")
        per = [limit_stats(l.snapshot(), "fl")["requests"]["allowed"] for l in lbds]
        self.assertTrue(all(p > 0 for p in per), f"one instance did all: {per}")
        self.assertEqual([self.errors(l) for l in lbds], [0, 0])

    def test_redis_down_falls_back_to_local_and_back(self):
        """1r/m, burst 2: three requests pass over both instances, the next
        is refused; redis killed: each instance limits alone (three each),
        no 5xx, the fallbacks counted and logged once per worker; redis back
        on its port: shared again."""
        lbds = self.start_fleet({"name": "fl", "rate": "1r/m", "burst": 2, "scope": "fleet"},
                                workers=1)
        a, b = lbds
        src = "127.0.0.21"
        got = [self.request_to(a, src), self.request_to(b, src), self.request_to(a, src),
               self.request_to(b, src)]
        self.assertEqual(got, [200, 200, 200, 429])
        port = self.redis.port
        since = [l.log_size() for l in lbds]
        self.redis.stop()
        got = [self.request_to(l, src) for l in (a, a, a, a, b, b, b, b)]
        self.assertEqual(got, [200, 200, 200, 429, 200, 200, 200, 429])
        for l in lbds:
            self.assertGreaterEqual(self.errors(l), 4)
        # Both instances write to the test's one stderr log: a line each.
        log = a.log_since(min(since))
        self.assertEqual(len(re.findall(r"judged by this instance alone", log)), 2, log)
        self.redis = Redis(self, port=port)
        self.addCleanup(self.redis.stop)
        wait_for(lambda: a.log_since(min(since)).count("answers again: fleet") == 2, timeout=15,
                 what="both workers back on redis")
        # Shared again: a fresh address gets three over both, not six.
        src = "127.0.0.22"
        got = [self.request_to(l, src) for l in (a, b, a, b)]
        self.assertEqual(got, [200, 200, 200, 429])

    def test_redis_too_slow_falls_back(self):
        """Redis stopped (SIGSTOP): a request waits redis.timeout (200 ms),
        then this instance judges it; the connection is dropped so the next
        ones do not wait; no 5xx. Redis resumed: shared again."""
        lbds = self.start_fleet({"name": "fl", "rate": "1r/m", "burst": 2, "scope": "fleet"},
                                n=1, workers=1)
        (a,) = lbds
        since = a.log_size()
        os.kill(self.redis.proc.pid, signal.SIGSTOP)
        try:
            # A client that resets its connection while its request waits
            # for redis: the ask is dropped (ASan would see a use after free).
            c = HttpConn(a.listen, timeout=15, source="127.0.0.25")
            c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            wait_for(lambda: a.snapshot()["totals"]["requests"] >= 1, what="the request read")
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()
            got = [self.request_to(a, "127.0.0.23") for _ in range(4)]
            self.assertEqual(got, [200, 200, 200, 429])
            a.wait_log(r"no answer within redis\.timeout", since=since)
            self.assertGreaterEqual(self.errors(a), 4)
        finally:
            os.kill(self.redis.proc.pid, signal.SIGCONT)
        wait_for(lambda: "answers again: fleet" in a.log_since(since), timeout=15,
                 what="the worker back on redis")
        got = [self.request_to(a, "127.0.0.24") for _ in range(4)]
        self.assertEqual(got, [200, 200, 200, 429])
        self.assertEqual(len(re.findall(r"judged by this instance alone", a.log_since(since))), 1)

    def request_to(self, l, source):
        with HttpConn(l.listen, timeout=15, source=source) as c:
            return c.request("/").status
