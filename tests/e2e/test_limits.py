"""Per-server concurrency limits with a queue (servers[].max_requests,
pools[].queue) and slow start (pools[].slow_start), against real test
backends. What reached a backend is counted there (GET /stats: delayed_peak,
the most requests waiting out their delay= at once; heads), what lbd decided
in /status and /metrics. No timing assertions: counts in phases."""
import os
import re
import signal
import socket
import subprocess
import threading

from lbdtest import HttpConn, LbdTestCase, free_port, wait_for
from lbdextra import admin_metrics, admin_status, ext_config, find_server, run_requests, tally


def pool_status(admin, name):
    return next(p for p in admin_status(admin)["pools"] if p["name"] == name)


class Held:
    """A request sent on its own connection from a thread; .result() waits
    for its (status, backend) or ("error", repr)."""

    def __init__(self, addr, target):
        self.conn = HttpConn(addr, timeout=60)
        self.out = None
        self.t = threading.Thread(target=self._run, args=(target,), daemon=True)
        self.t.start()

    def _run(self, target):
        try:
            r = self.conn.request(target)
            self.out = (r.status, r.backend)
        except Exception as e:  # noqa: BLE001 - reported to the test
            self.out = ("error", repr(e))

    def result(self, timeout=60):
        self.t.join(timeout)
        self.conn.close()
        return self.out

    def leave(self):
        """The client goes away: a FIN (which also wakes the thread's
        read), then the close (a close from another thread while one reads
        would be put off until that read returns)."""
        self.conn.sock.shutdown(socket.SHUT_RDWR)
        self.t.join(30)
        self.conn.close()


class QueueTest(LbdTestCase):

    def _lbd(self, backend, max_requests, queue, workers=4):
        listen = f"127.0.0.1:{free_port()}"
        self.admin = f"127.0.0.1:{free_port()}"
        pools = [{"name": "web", "queue": queue,
                  "servers": [(backend.addr, 1, {"max_requests": max_requests})]}]
        cfg = ext_config(listen, pools, workers=workers, admin=self.admin,
                         timeouts={"backend_response": "30s"})
        return self.start_lbd(cfg, listen, workers=workers)

    def test_limit_over_all_workers(self):
        """max_requests = 2 on the only server, 4 workers, 10 clients at
        once each asking for a 500 ms answer on a connection of its own (so
        the kernel spreads them over the workers): the backend never has more
        than 2 of them at once, and all 10 succeed, those that waited
        included (places freed by one worker go to another's queue)."""
        b = self.start_backend("b1")
        lbd = self._lbd(b, 2, {"size": 100, "timeout": "20s"})
        got = run_requests(lbd.listen, [("/?delay=500", ())] * 10, nthreads=10, new_conn=True)
        per, bad = tally(got)
        self.assertEqual(bad, [])
        self.assertEqual(per, {"b1": 10})
        st = b.stats()
        self.assertEqual(st["delayed_peak"], 2, st)     # the limit, and it was reached
        self.assertEqual(st["heads"], 10, st)
        p = pool_status(self.admin, "web")
        self.assertGreaterEqual(p["queued"], 1, p)
        self.assertEqual((p["queue_depth"], p["queue_refused"]), (0, {"full": 0, "timeout": 0}), p)
        srv = find_server(admin_status(self.admin), b.addr)
        self.assertEqual((srv["max_requests"], srv["in_flight"]), (2, 0), srv)
        m = admin_metrics(self.admin)
        self.assertEqual(m.value("lbd_pool_queued_total", pool="web"), p["queued"])
        self.assertEqual(m.value("lbd_backend_max_requests", pool="web", server=b.addr), 2)

    def test_queue_full(self):
        """max_requests = 1, queue size 2, 4 workers: one request holds the
        place, two wait (in whatever workers: the size is the pool's), the
        next one is refused at once with 503 and counted; a waiting client
        that leaves gives its place in the queue back; the rest succeed."""
        b = self.start_backend("b1")
        lbd = self._lbd(b, 1, {"size": 2, "timeout": "60s"})
        first = Held(lbd.listen, "/?delay=3000")
        wait_for(lambda: b.stats()["delayed"] == 1, 10, what="the first request at the backend")
        waiting = [Held(lbd.listen, "/?delay=10") for _ in range(2)]
        wait_for(lambda: pool_status(self.admin, "web")["queue_depth"] == 2, 10,
                 what="two requests in the queue")
        r = self.get("/")
        self.assertEqual(r.status, 503, r)
        p = pool_status(self.admin, "web")
        self.assertEqual((p["queue_depth"], p["queue_refused"]["full"]), (2, 1), p)
        # A waiting client leaves: its place in the queue is free again.
        waiting[1].leave()
        wait_for(lambda: pool_status(self.admin, "web")["queue_depth"] == 1, 10,
                 what="the client that left to leave the queue")
        self.assertEqual(first.result(), (200, "b1"))
        self.assertEqual(waiting[0].result(), (200, "b1"))
        p = pool_status(self.admin, "web")
        self.assertEqual((p["queue_depth"], p["queued"], p["queue_refused"]),
                         (0, 2, {"full": 1, "timeout": 0}), p)
        self.assertEqual(b.stats()["heads"], 2)         # the one that left never got there
        m = admin_metrics(self.admin)
        self.assertEqual(m.value("lbd_pool_queue_refused_total", pool="web", reason="full"), 1)
        self.assertEqual(m.value("lbd_pool_queue_depth", pool="web"), 0)

    def test_queue_timeout(self):
        """max_requests = 1, queue timeout 300 ms: while one request holds
        the place for 3 s, three more wait and each gets 503 when its
        timeout passes, counted; none of them reaches the backend."""
        b = self.start_backend("b1")
        lbd = self._lbd(b, 1, {"size": 10, "timeout": "300ms"}, workers=2)
        first = Held(lbd.listen, "/?delay=3000")
        wait_for(lambda: b.stats()["delayed"] == 1, 10, what="the first request at the backend")
        got = run_requests(lbd.listen, [("/", ())] * 3, nthreads=3)
        self.assertEqual([g[0] for g in got], [503] * 3, got)
        p = pool_status(self.admin, "web")
        self.assertEqual((p["queue_depth"], p["queued"], p["queue_refused"]),
                         (0, 3, {"full": 0, "timeout": 3}), p)
        self.assertEqual(first.result(), (200, "b1"))
        self.assertEqual(b.stats()["heads"], 1)
        m = admin_metrics(self.admin)
        self.assertEqual(m.value("lbd_pool_queue_refused_total", pool="web", reason="timeout"), 3)
        # And the place is free again afterwards.
        self.assertEqual(self.get("/").status, 200)


    def test_worker_death_frees_queue(self):
        """A worker killed with requests in the queue: the master takes them
        out of the pool's depth (and the dead request out of the server's
        in-flight count), so the queue and the server are free again."""
        self.expect_worker_deaths()
        b = self.start_backend("b1")
        lbd = self._lbd(b, 1, {"size": 2, "timeout": "60s"}, workers=1)
        first = Held(lbd.listen, "/?delay=3000")
        wait_for(lambda: b.stats()["delayed"] == 1, 10, what="the first request at the backend")
        waiting = [Held(lbd.listen, "/") for _ in range(2)]
        wait_for(lambda: pool_status(self.admin, "web")["queue_depth"] == 2, 10,
                 what="two requests in the queue")
        pid = lbd.worker_pids()[0]
        self.assertGreater(pid, 1)
        os.kill(pid, signal.SIGKILL)
        for h in [first] + waiting:
            self.assertEqual(h.result()[0], "error")
        wait_for(lambda: lbd.worker_pids().get(0, pid) != pid, 15, what="the worker's respawn")
        wait_for(lambda: pool_status(self.admin, "web")["queue_depth"] == 0, 10,
                 what="the dead worker's queue to be taken out")
        self.assertEqual(find_server(admin_status(self.admin), b.addr)["in_flight"], 0)
        got = run_requests(lbd.listen, [("/", ())] * 3, nthreads=3)
        self.assertEqual([g[0] for g in got], [200] * 3, got)

    def test_bad_config_start_and_reload(self):
        """An out-of-range max_requests: lbd refuses to start (FILE:LINE),
        and a reload to it fails and keeps the running configuration."""
        b = self.start_backend("b1")
        listen = f"127.0.0.1:{free_port()}"

        def cfg(n):
            return ext_config(listen, [{"name": "web", "servers": [(b.addr, 1, {"max_requests": n})]}])
        path = self.write_file(self.path("bad.conf"), cfg(-2))
        p = subprocess.run([self.lbd_bin, "-c", path], stderr=subprocess.PIPE, timeout=20)
        self.assertEqual(p.returncode, 1)
        line = next(i for i, ln in enumerate(cfg(-2).split("\n"), 1) if "max_requests" in ln)
        self.assertRegex(p.stderr.decode(), rf"{re.escape(path)}:{line}: 'max_requests' must "
                                             r"be between 0 and 1000000")
        lbd = self.start_lbd(cfg(5), listen, workers=2)
        off = lbd.log_size()
        _, after = lbd.reload(cfg(2000000), expect_ok=False)
        self.assertEqual(after["reload_failures"], 1)
        lbd.wait_log(r"reload failed.*:\d+: 'max_requests' must be between 0 and 1000000", since=off)
        self.assertServes(lbd)
        self.assertEqual(find_server(lbd.snapshot(), b.addr)["max_requests"], 5)


STRATEGIES = ("round_robin", "weighted_round_robin", "least_connections", "random",
              "power_of_two", "least_time", "hash")


class SlowStartTest(LbdTestCase):

    def test_ramp_after_health_up(self):
        """Two servers of weight 1 in a pool per strategy, slow_start 8s.
        At the first start nothing ramps (every server is there from the
        beginning): b2 gets about half. b2 fails its health checks, then
        recovers: right after it is UP again it gets a small share in every
        pool; once its ramp is over (its effective weight back to 1 in
        /status), about half again. For hash, the keys that came back to b2
        during the ramp stay there after it. Shares are counted on 80
        requests per pool and phase, 8 clients at once."""
        b1, b2 = self.start_backends("b1", "b2")
        listen = f"127.0.0.1:{free_port()}"
        self.admin = f"127.0.0.1:{free_port()}"
        health = {"path": "/", "interval": "200ms", "timeout": "1s", "rise": 1, "fall": 1}
        pools = [{"name": s, "strategy": s, "slow_start": "8s", "health_check": health,
                  "hash_key": "header:X-Key" if s == "hash" else None,
                  "servers": [(b1.addr, 1), (b2.addr, 1)]} for s in STRATEGIES]
        routes = [("*", f"/{s}/", s) for s in STRATEGIES]
        cfg = ext_config(listen, pools, routes=routes, workers=2, admin=self.admin)
        lbd = self.start_lbd(cfg, listen, workers=2)

        def b2_weights():
            st = admin_status(self.admin)
            return {s: find_server(st, b2.addr, s)["effective_weight"] for s in STRATEGIES}

        def phase():
            shares, on_b2 = {}, {}
            for s in STRATEGIES:
                jobs = [(f"/{s}/x?delay=5", [("X-Key", f"k{i}")]) for i in range(80)]
                got = run_requests(lbd.listen, jobs, nthreads=8)
                per, bad = tally(got)
                self.assertEqual(bad, [], s)
                shares[s] = per.get("b2", 0) / 80
                on_b2[s] = {i for i, g in enumerate(got) if g[1] == "b2"}
            return shares, on_b2

        self.assertEqual(b2_weights(), {s: 1 for s in STRATEGIES})
        start, _ = phase()
        for s in STRATEGIES:
            self.assertGreaterEqual(start[s], 0.2, (s, start))

        b2.control("status=503")
        wait_for(lambda: all(find_server(admin_status(self.admin), b2.addr, s)["health"] == "down"
                             for s in STRATEGIES), 15, what="b2 down in every pool")
        b2.control("")
        wait_for(lambda: all(find_server(admin_status(self.admin), b2.addr, s)["health"] == "up"
                             for s in STRATEGIES), 15, what="b2 up again in every pool")
        w = b2_weights()
        self.assertTrue(all(0 < w[s] < 1 for s in STRATEGIES), w)
        ramp, ramp_keys = phase()
        for s in STRATEGIES:
            self.assertLessEqual(ramp[s], 0.35, (s, ramp))
        self.assertGreater(ramp["round_robin"] + ramp["random"] + ramp["hash"], 0, ramp)

        wait_for(lambda: b2_weights() == {s: 1 for s in STRATEGIES}, 30,
                 what="b2's ramp to end in every pool")
        after, after_keys = phase()
        for s in STRATEGIES:
            self.assertGreaterEqual(after[s], 0.2, (s, after))
        # hash: a key comes back once and stays.
        self.assertLessEqual(ramp_keys["hash"], after_keys["hash"])
        m = admin_metrics(self.admin)
        self.assertEqual(m.value("lbd_backend_effective_weight", pool="hash", server=b2.addr), 1)

    def test_reload_adds_ramping_server(self):
        """A reload that adds a server, or gives one weight again, starts
        its ramp (/status effective_weight below its weight); the others
        keep theirs; a pool without slow_start has none."""
        b1, b2, b3 = self.start_backends("b1", "b2", "b3")
        listen = f"127.0.0.1:{free_port()}"
        self.admin = f"127.0.0.1:{free_port()}"

        def cfg(servers, slow="1h"):
            return ext_config(listen, [{"name": "web", "slow_start": slow, "servers": servers,
                                        "strategy": "weighted_round_robin"},
                                       {"name": "plain", "servers": servers}],
                              routes=[("*", "/", "web"), ("plain.test", "/", "plain")],
                              workers=2, admin=self.admin)
        lbd = self.start_lbd(cfg([(b1.addr, 4), (b2.addr, 0)]), listen, workers=2)
        st = admin_status(self.admin)
        self.assertEqual([find_server(st, b.addr, "web")["effective_weight"] for b in (b1, b2)],
                         [4, 0])
        lbd.reload(cfg([(b1.addr, 4), (b2.addr, 2), (b3.addr, 10)]))
        st = admin_status(self.admin)
        w = {b.name: find_server(st, b.addr, "web")["effective_weight"] for b in (b1, b2, b3)}
        self.assertEqual(w["b1"], 4, w)
        self.assertTrue(0.2 <= w["b2"] < 0.3 and 1 <= w["b3"] < 1.5, w)   # 10 % of 2 and of 10
        w = {b.name: find_server(st, b.addr, "plain")["effective_weight"] for b in (b1, b2, b3)}
        self.assertEqual(w, {"b1": 4, "b2": 2, "b3": 10})
        # Requests flow; b3 is ramping: it gets some, not its full 10/16.
        per, bad = tally(run_requests(lbd.listen, [("/", ())] * 160, nthreads=4))
        self.assertEqual(bad, [])
        self.assertLess(per.get("b3", 0), 80, per)
