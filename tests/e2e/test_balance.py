"""Load balancing: round robin, smooth weighted round robin, counters."""
import threading
import time

from lbdtest import HttpConn, LbdTestCase, free_port, lbd_config, wait_for


def hammer(addr, total, nconns, target="/", deadline_s=90.0):
    """TOTAL requests over NCONNS keep-alive connections in parallel threads.
    Returns (ok, errors, statuses)."""
    per = [total // nconns + (1 if i < total % nconns else 0) for i in range(nconns)]
    lock = threading.Lock()
    res = {"ok": 0, "errors": [], "statuses": {}}
    deadline = time.monotonic() + deadline_s

    def run(n):
        c = None
        done = 0
        while done < n and time.monotonic() < deadline:
            try:
                if c is None:
                    c = HttpConn(addr, timeout=10)
                r = c.request(target)
                with lock:
                    res["statuses"][r.status] = res["statuses"].get(r.status, 0) + 1
                    if r.status == 200:
                        res["ok"] += 1
                done += 1
            except Exception as e:  # noqa: BLE001 - counted and reported
                with lock:
                    res["errors"].append(repr(e))
                if c:
                    c.close()
                c = None
                done += 1
        if c:
            c.close()

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in per]
    for t in threads:
        t.start()
    for t in threads:
        t.join(deadline_s + 15)
    return res


class BalanceTest(LbdTestCase):

    def test_round_robin_order_is_global(self):
        """30 requests on new connections over 3 backends: b1 b2 b3 repeated
        exactly, whichever worker takes each connection."""
        bs = self.start_backends("b1", "b2", "b3")
        self.simple_lbd(bs, workers=2)
        got = []
        for _ in range(30):
            r = self.get("/")
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.body.decode().strip(), r.backend, "body names the backend")
            got.append(r.backend)
        self.assertEqual(got, ["b1", "b2", "b3"] * 10)

    def test_weighted_smooth_order_and_ratio(self):
        """weights 5,1,1: a a b a c a a on new connections, then 10,000
        requests over parallel keep-alive connections split 5:1:1."""
        a, b, c = self.start_backends("a", "b", "c")
        lbd = self.simple_lbd([a, b, c], strategy="weighted_round_robin", weights=[5, 1, 1])
        first = [self.get("/").backend for _ in range(7)]
        self.assertEqual(first, ["a", "a", "b", "a", "c", "a", "a"])

        n = 10000
        res = hammer(lbd.listen, n, nconns=6)
        self.assertEqual(res["errors"], [], "no request failed")
        self.assertEqual(res["ok"], n, f"statuses: {res['statuses']}")

        total = n + 7
        snap = lbd.snapshot()
        per = {s["address"]: s["requests"] for p in snap["pools"] for s in p["servers"]}
        from_backends = {be.addr: be.stats()["requests"] - 1 for be in (a, b, c)}  # minus /stats
        self.assertEqual(sum(per.values()), total, per)
        self.assertEqual(per, from_backends, "lbd's per-server counts match the backends'")
        for be, w in ((a, 5), (b, 1), (c, 1)):
            share = per[be.addr] / total
            want = w / 7
            self.assertLess(abs(share - want), 0.03 * want,
                            f"{be.name}: {per[be.addr]} of {total} ({share:.4f}, want {want:.4f})")

    def test_weight_zero_is_out_of_rotation(self):
        """weight 0 excludes a server, in both strategies."""
        bs = self.start_backends("b1", "b2", "b3")
        port = free_port()
        listen = f"127.0.0.1:{port}"
        servers = [(bs[0].addr, 1), (bs[1].addr, 0), (bs[2].addr, 1)]
        cfg = lbd_config(listen, [{"name": "rr", "servers": servers},
                                  {"name": "wrr", "strategy": "weighted_round_robin",
                                   "servers": [(bs[0].addr, 2), (bs[1].addr, 0), (bs[2].addr, 1)]}],
                         routes=[("*", "/", "rr"), ("*", "/w", "wrr")], workers=2)
        self.start_lbd(cfg, listen, workers=2)
        self.assertEqual([self.get("/").backend for _ in range(6)], ["b1", "b3"] * 3)
        self.assertEqual([self.get("/w").backend for _ in range(6)], ["b1", "b3", "b1"] * 2)

    def test_snapshot_counters(self):
        """After exactly N requests: totals.requests == N, the per-server
        requests sum to N and are N/3 each, and the 2xx counts match."""
        bs = self.start_backends("b1", "b2", "b3")
        lbd = self.simple_lbd(bs, workers=2)
        n = 51      # a multiple of 3: each server gets exactly N/3
        base = lbd.snapshot()   # the readiness probe made a connection, no request
        self.assertEqual(base["totals"]["requests"], 0, base["totals"])
        for _ in range(n):
            r = self.get("/")
            self.assertEqual(r.status, 200, r)
        snap = lbd.snapshot()
        self.assertEqual(snap["totals"]["requests"], n, snap["totals"])
        self.assertEqual(snap["totals"]["connections"] - base["totals"]["connections"], n,
                         snap["totals"])
        self.assertEqual(sum(w["requests"] for w in snap["workers"]), n)
        self.assertEqual(sum(w["responses"]["2xx"] for w in snap["workers"]), n)
        for cls in ("1xx", "3xx", "4xx", "5xx"):
            self.assertEqual(sum(w["responses"][cls] for w in snap["workers"]), 0, cls)
        (pool,) = snap["pools"]
        self.assertEqual(pool["name"], "web")
        self.assertEqual([s["address"] for s in pool["servers"]], [b.addr for b in bs])
        for s in pool["servers"]:
            self.assertEqual(s["requests"], n // 3, s)
            self.assertEqual(s["responses"]["2xx"], n // 3, s)
            self.assertEqual(s["failures"], 0, s)
        self.assertEqual(sum(s["requests"] for s in pool["servers"]), n)
        # Gauges settle to zero once every client has gone.
        wait_for(lambda: lbd.snapshot()["totals"]["active_connections"] == 0, 10,
                 what="active_connections to drop to 0")

    def test_byte_counters(self):
        """bytes_in/bytes_out: exactly what the client sent and received, and
        per server what went to and came from the backend."""
        (b,) = self.start_backends("b1")
        lbd = self.simple_lbd([b], workers=1)
        base = lbd.snapshot()
        req = b"GET /?echo=1 HTTP/1.1\r\nHost: bytes.test\r\nX-Pad: " + b"p" * 100 + b"\r\n\r\n"
        body = b"q" * 5000
        post = (b"POST /?echo=1 HTTP/1.1\r\nHost: bytes.test\r\nContent-Length: %d\r\n\r\n"
                % len(body)) + body
        with HttpConn(lbd.listen) as c:
            c.send(req)
            r1 = c.read_response()
            c.send(post)
            r2 = c.read_response()
        received = len(r1.raw_head) + len(r1.body) + len(r2.raw_head) + len(r2.body)
        self.assertEqual((r1.status, r2.status), (200, 200))
        self.assertEqual(r2.header("X-Body-Bytes"), str(len(body)))
        snap = lbd.snapshot()
        t, t0 = snap["totals"], base["totals"]
        self.assertEqual(t["bytes_in"] - t0["bytes_in"], len(req) + len(post))
        self.assertEqual(t["bytes_out"] - t0["bytes_out"], received)
        (s,) = snap["pools"][0]["servers"]
        # Each echo body is the head exactly as the backend got it.
        self.assertEqual(s["bytes_out"], len(r1.body) + len(r2.body) + len(body))
        # From the backend: the two bodies plus two heads; what the client
        # got differs only by the response headers lbd rewrites.
        self.assertGreater(s["bytes_in"], len(r1.body) + len(r2.body) + 2 * 100)
        self.assertLess(abs(s["bytes_in"] - received), 200, (s["bytes_in"], received))
