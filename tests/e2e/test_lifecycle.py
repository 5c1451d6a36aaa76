"""Process lifecycle: respawn, graceful stop, reload, signals, titles."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

from lbdtest import (ConnectionClosed, HttpConn, LbdTestCase, free_port, http_get, lbd_config,
                     pid_alive, proc_children, proc_cmdline, proc_title, split_hostport, wait_for)


class LoadLoop:
    """Client threads doing requests in a loop until stopped (bounded),
    each over its own keep-alive connection (NEW_CONN: a new connection
    per request). A failed request counts as an error and the thread goes
    on with a new connection."""

    def __init__(self, addr, nthreads=4, new_conn=False, target="/", max_seconds=60,
                 http10=False, sources=None):
        self.addr = addr
        self.sources = sources      # client addresses to bind, thread i takes i % len
        self.new_conn = new_conn
        self.http10 = http10        # HTTP/1.0 with Connection: keep-alive
        self.connections = 0        # opened; ok / connections = requests per connection
        self.target = target
        self.stop_ev = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.errors = []            # (thread, repr)
        self.backends = []          # X-Backend of each success, in completion order
        self.statuses = {}
        self.deadline = time.monotonic() + max_seconds
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(nthreads)]
        for t in self.threads:
            t.start()

    def _run(self, i):
        c = None
        while not self.stop_ev.is_set() and time.monotonic() < self.deadline:
            try:
                if c is None:
                    src = self.sources[i % len(self.sources)] if self.sources else None
                    c = HttpConn(self.addr, timeout=10, source=src)
                    with self.lock:
                        self.connections += 1
                if self.http10:
                    r = c.request(self.target, version="1.0", headers=[("Connection", "keep-alive")])
                else:
                    r = c.request(self.target)
                with self.lock:
                    self.statuses[r.status] = self.statuses.get(r.status, 0) + 1
                    if r.status == 200:
                        self.ok += 1
                        self.backends.append(r.backend)
                    else:
                        self.errors.append((i, f"status {r.status}"))
                conn = (r.header("Connection") or "").lower()
                if self.new_conn or conn == "close" or (self.http10 and conn != "keep-alive"):
                    c.close()
                    c = None
            except Exception as e:  # noqa: BLE001 - counted and reported
                with self.lock:
                    self.errors.append((i, repr(e)))
                if c:
                    c.close()
                c = None
        if c:
            c.close()

    def count(self):
        with self.lock:
            return self.ok

    def wait_count(self, n, timeout=20):
        wait_for(lambda: self.count() >= n, timeout, what=f"{n} successful requests")

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(30)


class RespawnTest(LbdTestCase):

    def test_kill9_worker_under_load(self):
        """kill -9 a busy worker: it is respawned (same id, new pid, log says
        respawning), restarts == 1, and only its connections saw errors."""
        self.expect_worker_deaths()
        bs = self.start_backends("b1", "b2")
        lbd = self.simple_lbd(bs, workers=2)
        old = lbd.worker_pids()
        self.assertEqual(sorted(old), [0, 1])
        nthreads = 6
        load = LoadLoop(lbd.listen, nthreads=nthreads)
        try:
            load.wait_count(200)
            # The victim: the worker with the most open connections.
            snap = lbd.snapshot()
            victim = max(lbd.running_workers(snap), key=lambda w: w["active_connections"])
            vid, vpid = victim["id"], victim["pid"]
            self.assertEqual(old[vid], vpid)
            log_at = lbd.log_size()
            os.kill(vpid, signal.SIGKILL)
            lbd.wait_log(rf"worker {vid} \(pid {vpid}\) killed by signal 9.*respawning", log_at)

            def respawned():
                s = lbd.snapshot()
                ws = [w for w in lbd.running_workers(s) if w["id"] == vid]
                return ws and ws[0]["pid"] not in (0, vpid) and s
            snap = wait_for(respawned, 15, what=f"worker {vid} to be respawned")
            new_pid = [w for w in snap["workers"] if w["id"] == vid and w["state"] == "running"][0]["pid"]
            # The master publishes the pid right after fork(); the child
            # titles itself a moment later.
            wait_for(lambda: proc_title(new_pid) == f"lbd: worker {vid}", 15,
                     what=f"pid {new_pid} to be titled 'lbd: worker {vid}'")
            self.assertEqual(lbd.worker_pids()[vid], new_pid)
            self.assertFalse(pid_alive(vpid))
            at_respawn = load.count()
            load.wait_count(at_respawn + 200)
        finally:
            load.stop()
        snap = lbd.snapshot()
        restarts = {w["id"]: w["restarts"] for w in lbd.running_workers(snap)}
        self.assertEqual(restarts, {vid: 1, 1 - vid: 0})
        self.assertEqual(snap["totals"]["worker_restarts"], 1)
        self.assertEqual(lbd.worker_pids()[1 - vid], old[1 - vid], "the other worker lived on")
        # Only the requests in flight on the killed worker's connections fail:
        # at most one per client connection.
        self.assertLessEqual(len(load.errors), nthreads, load.errors)
        self.assertGreater(load.ok, 400)
        # And new connections are served, by every worker.
        for _ in range(20):
            r = self.get("/")
            self.assertEqual(r.status, 200, r)
        self.assertIn("respawning", lbd.log())


def listening_sockets(port):
    """Sockets listening on PORT (IPv4), as `ss -ltn` lists them: one per
    member of an SO_REUSEPORT group."""
    with open("/proc/net/tcp") as f:
        rows = [ln.split() for ln in f.readlines()[1:]]
    return sum(1 for r in rows if r[3] == "0A" and int(r[1].split(":")[1], 16) == port)


class CrashLoopTest(LbdTestCase):
    """A worker that keeps dying is respawned after a growing delay; while
    it waits, its listening socket leaves the SO_REUSEPORT group, or the
    kernel's hash would keep queueing a share of new connections on it."""

    allow_worker_deaths = True

    def crash_loop(self, lbd, wid, until_ms, last=None):
        """Kill worker WID each time it is (re)started, right away, until a
        death is answered with a respawn delay of UNTIL_MS (100 ms, doubled
        at each death within 2 s of a start). LAST(pid) runs on the worker
        about to die that last time. Returns the log offset of that death."""
        pid = lbd.worker_pids()[wid]
        delay = 0
        for _ in range(20):
            nxt = min(delay * 2, 10000) if delay else 100
            if nxt == until_ms and last is not None:
                last(pid)
            at = lbd.log_size()
            os.kill(pid, signal.SIGKILL)
            m = lbd.wait_log(rf"worker {wid} \(pid {pid}\) killed by signal 9[^;]*; "
                             rf"respawning in (\d+) ms", at)
            delay = int(m.group(1))
            if delay == until_ms:
                return at
            old = pid
            pid = wait_for(lambda: lbd.worker_pids().get(wid) not in (None, old) and
                           lbd.worker_pids()[wid], 15, what=f"worker {wid} to be respawned")
        self.fail(f"no respawn delay of {until_ms} ms after 20 deaths")

    def wait_served_by(self, lbd, wid):
        """New connections until worker WID has served one."""
        def served():
            self.assertServes(lbd)
            return [w for w in lbd.running_workers() if w["id"] == wid][0]["requests"] > 0
        wait_for(served, 30, interval=0, what=f"worker {wid} to serve a connection")

    def start(self, workers):
        (b1,) = self.start_backends("b1")
        self.port = free_port()
        listen = f"127.0.0.1:{self.port}"
        return self.start_lbd(lbd_config(listen, [{"name": "web", "servers": [(b1.addr, 1)]}],
                                         workers=workers), listen, workers=workers)

    def require_migration(self, lbd):
        try:
            with open("/proc/sys/net/ipv4/tcp_migrate_req") as f:
                on = f.read().strip() == "1"
        except OSError:
            on = False
        if not on:
            self.require_capability("net.ipv4.tcp_migrate_req is off and lbd could not set it "
                                    "(needs root and Linux 5.14)")

    def test_crash_looping_worker_does_not_stall_new_connections(self):
        """Worker 1 dies at every start until its respawn waits 6.4 s. Its
        socket's queue (connections it never accepted: it was stopped) moves
        to worker 0, and 200 new connections, each allowed 2 s, all go to
        worker 0 instead of about half of them waiting for the respawn."""
        lbd = self.start(workers=2)
        self.require_migration(lbd)
        queued = []

        def stop_and_queue(pid):
            os.kill(pid, signal.SIGSTOP)
            for _ in range(20):
                c = HttpConn(lbd.listen, timeout=2)
                queued.append(c)
                c.send(b"GET / HTTP/1.1\r\nHost: lbd.test\r\nConnection: close\r\n\r\n")
        try:
            at = self.crash_loop(lbd, 1, 6400, last=stop_and_queue)
            self.assertEqual(listening_sockets(self.port), 1, "worker 1's socket still listens")
            for i, c in enumerate(queued):
                try:
                    r = c.read_response()
                except (OSError, ConnectionClosed) as e:
                    self.fail(f"queued connection {i} of 20 not answered: {e!r}")
                self.assertEqual(r.status, 200, r)
        finally:
            for c in queued:
                c.close()
        failures = []
        lock = threading.Lock()

        def client(n):
            for _ in range(n):
                try:
                    r = http_get(lbd.listen, "/", timeout=2)
                    ok = r.status == 200
                except (OSError, ConnectionClosed) as e:
                    ok, r = False, e
                if not ok:
                    with lock:
                        failures.append(repr(r))
        threads = [threading.Thread(target=client, args=(50,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(failures, [], f"{len(failures)} of 200 new connections failed")
        self.assertNotRegex(lbd.log_since(at), r"worker 1 started",
                            "worker 1 was back before the test was done: the test proves nothing")

    def test_respawned_worker_listens_again(self):
        """After the backoff the worker gets a socket again: the group has
        two members (`ss -ltn`), and new connections reach the new worker."""
        lbd = self.start(workers=2)
        self.crash_loop(lbd, 1, 200)
        wait_for(lambda: len(lbd.running_workers()) == 2, 15, what="worker 1 to be back")
        self.assertEqual(listening_sockets(self.port), 2)
        self.wait_served_by(lbd, 1)

    def test_reload_during_a_backoff_opens_the_socket_again(self):
        """A reload starts every worker of the new configuration at once,
        the one that was waiting too: its socket is opened again for it."""
        lbd = self.start(workers=2)
        self.crash_loop(lbd, 1, 3200)
        self.assertEqual(listening_sockets(self.port), 1)
        lbd.reload()
        wait_for(lambda: len(lbd.running_workers()) == 2, 15, what="both workers to run")
        self.assertEqual(listening_sockets(self.port), 2)
        self.wait_served_by(lbd, 1)

    def test_single_worker_keeps_its_socket(self):
        """With one worker there is no other socket to send connections
        to: the socket stays, and a connection made during the backoff is
        served once the worker is back (not refused)."""
        lbd = self.start(workers=1)
        at = self.crash_loop(lbd, 0, 400)
        self.assertEqual(listening_sockets(self.port), 1)
        r = http_get(lbd.listen, "/", timeout=15)
        self.assertEqual(r.status, 200, r)
        self.assertRegex(lbd.log_since(at), r"worker 0 started")


class StopTest(LbdTestCase):

    def test_graceful_stop(self):
        """SIGTERM with a slow request in flight: new connections are refused
        at once, the request completes with 200 and its body, lbd exits 0."""
        (b,) = self.start_backends("b1")
        lbd = self.simple_lbd([b], workers=2, shutdown_timeout="10s")
        result = {}

        def slow():
            try:
                result["r"] = http_get(lbd.listen, "/?delay=3000&size=1000", timeout=20)
            except Exception as e:  # noqa: BLE001
                result["e"] = e
        t = threading.Thread(target=slow, daemon=True)
        t.start()
        lbd.wait_in_flight(1, what="the slow request to reach the backend")
        lbd.signal(signal.SIGTERM)

        def refused():
            try:
                s = socket.create_connection(split_hostport(lbd.listen), timeout=2)
            except ConnectionRefusedError:
                return True
            s.close()
            return False
        wait_for(refused, 5, what="new connections to be refused")
        self.assertTrue(t.is_alive(), "the slow request was still in flight when refusing began")
        t.join(20)
        self.assertFalse(t.is_alive())
        self.assertNotIn("e", result, f"the in-flight request failed: {result.get('e')!r}")
        r = result["r"]
        self.assertEqual(r.status, 200, r)
        self.assertEqual(len(r.body), 1000)
        rc = lbd.wait_exit(15)
        self.assertEqual(rc, 0, f"lbd exit status; log:\n{lbd.log()[-2000:]}")
        lbd.exit_checked = True
        self.assertRegex(lbd.log(), r"graceful stop")

    def test_graceful_stop_closes_keepalive_clients_with_their_answer(self):
        """SIGTERM while keep-alive clients send requests back to back: each
        connection's last answer is whole and says Connection: close (HTTP/1.1)
        or drops keep-alive (HTTP/1.0); no request meets a closed
        connection, and lbd exits 0."""
        bs = self.start_backends("b1", "b2")
        lbd = self.simple_lbd(bs, workers=2, shutdown_timeout="10s")
        lock = threading.Lock()
        results = []            # (thread, requests, how the connection ended)
        going = threading.Barrier(7)

        def client(i, http10):
            n = 0
            how = "no answer said close"
            with HttpConn(lbd.listen, timeout=10) as c:
                try:
                    going.wait(10)
                    while n < 100000:
                        if http10:
                            r = c.request("/", version="1.0",
                                          headers=[("Connection", "keep-alive")])
                        else:
                            r = c.request("/")
                        if r.status != 200:
                            how = f"status {r.status}"
                            break
                        n += 1
                        conn = (r.header("Connection") or "").lower()
                        if conn == "close" or (http10 and conn != "keep-alive"):
                            how = "close"
                            break
                except Exception as e:  # noqa: BLE001 - reported below
                    how = repr(e)
            with lock:
                results.append((i, n, how))
        threads = [threading.Thread(target=client, args=(i, i >= 4), daemon=True)
                   for i in range(6)]
        for t in threads:
            t.start()
        going.wait(10)
        lbd.wait_in_flight(1, what="requests to be under way")
        lbd.signal(signal.SIGTERM)
        for t in threads:
            t.join(30)
        self.assertEqual(sorted(how for _, _, how in results), ["close"] * 6, results)
        self.assertEqual(lbd.wait_exit(15), 0)
        lbd.exit_checked = True

    def test_quit_is_graceful(self):
        """SIGQUIT stops gracefully too: the in-flight request completes."""
        (b,) = self.start_backends("b1")
        lbd = self.simple_lbd([b], workers=1)
        with HttpConn(lbd.listen, timeout=20) as c:
            c.send(b"GET /?delay=1000 HTTP/1.1\r\nHost: x\r\n\r\n")
            lbd.wait_in_flight(1)
            lbd.signal(signal.SIGQUIT)
            r = c.read_response()
            self.assertEqual((r.status, r.body), (200, b"b1\n"))
            self.assertEqual((r.header("Connection") or "").lower(), "close",
                             "a draining worker closes after the response")
        self.assertEqual(lbd.wait_exit(15), 0)
        lbd.exit_checked = True

    def test_fast_stop(self):
        """SIGINT: lbd exits promptly (exit 0) even with a request hanging."""
        (b,) = self.start_backends("b1")
        lbd = self.simple_lbd([b], workers=2, shutdown_timeout="30s")
        c = HttpConn(lbd.listen, timeout=20)
        try:
            c.send(b"GET /?hang=1 HTTP/1.1\r\nHost: x\r\n\r\n")
            lbd.wait_in_flight(1)
            pids = list(lbd.worker_pids().values())
            lbd.signal(signal.SIGINT)
            rc = lbd.wait_exit(10)
            self.assertEqual(rc, 0)
            lbd.exit_checked = True
            for pid in pids:
                wait_for(lambda: not pid_alive(pid), 5, what=f"worker {pid} to exit")
        finally:
            c.close()


    def test_shutdown_timeout_kills_stuck_worker(self):
        """A request that never ends cannot hold a graceful stop past
        shutdown_timeout: the worker is killed and lbd exits 0."""
        (b,) = self.start_backends("b1")
        lbd = self.simple_lbd([b], workers=2, shutdown_timeout="1s")
        with HttpConn(lbd.listen, timeout=20) as c:
            c.send(b"GET /?hang=1 HTTP/1.1\r\nHost: x\r\n\r\n")
            lbd.wait_in_flight(1)
            pids = list(lbd.worker_pids().values())
            lbd.signal(signal.SIGTERM)
            rc = lbd.wait_exit(20)
            lbd.exit_checked = True
            self.assertEqual(rc, 0, lbd.log()[-2000:])
            self.assertEqual(c.read_until_eof(), b"", "the hung request got no response")
        self.assertRegex(lbd.log(), r"killing")
        for pid in pids:
            self.assertFalse(pid_alive(pid))

    def test_master_killed_workers_follow(self):
        """kill -9 of the master: the workers exit on their own (no orphans
        serving unsupervised), and a new lbd can start on the same file."""
        (b,) = self.start_backends("b1")
        lbd = self.simple_lbd([b], workers=2)
        pids = list(lbd.worker_pids().values())
        os.kill(lbd.pid, signal.SIGKILL)
        lbd.wait_exit(10)
        lbd.exit_checked = True
        for pid in pids:
            wait_for(lambda: not pid_alive(pid), 15, what=f"orphaned worker {pid} to exit")
        again = self.start_lbd(open(lbd.config_path).read(), lbd.listen, workers=2)
        self.assertEqual(http_get(again.listen, "/").status, 200)

    def test_daemonize(self):
        """-d: the command returns 0 at once, the daemon serves, writes its
        pid file (-p) and stops on SIGTERM."""
        (b,) = self.start_backends("b1")
        port = free_port()
        listen = f"127.0.0.1:{port}"
        conf = self.write_file(self.path("lbd.conf"), lbd_config(
            listen, [{"name": "web", "servers": [(b.addr, 1)]}], workers=2,
            extra=f'error_log = "{self.path("error.log")}";'))
        pidfile = self.path("lbd.pid")
        with open(self.path("daemon.out"), "wb") as out:
            p = subprocess.Popen([self.lbd_bin, "-d", "-c", conf, "-p", pidfile],
                                 stdout=out, stderr=out, stdin=subprocess.DEVNULL)
            rc = p.wait(15)
        self.assertEqual(rc, 0, open(self.path("daemon.out")).read())
        pid = wait_for(lambda: os.path.exists(pidfile) and int(open(pidfile).read()), 10,
                       what="the pid file")

        def kill_daemon():     # only if the test failed before stopping it
            if pid_alive(pid) and (proc_title(pid) or "").startswith("lbd: master"):
                kids = proc_children(pid)
                os.kill(pid, signal.SIGKILL)
                for k in kids:
                    if pid_alive(k):
                        os.kill(k, signal.SIGKILL)
        self.addCleanup(kill_daemon)
        self.assertNotEqual(pid, p.pid, "the daemon is not the process we started")
        self.assertTrue((proc_title(pid) or "").startswith("lbd: master"))
        r = wait_for(lambda: http_get(listen, "/"), 10, what="the daemon to serve")
        self.assertEqual(r.status, 200)
        snap = json.loads(subprocess.run([self.lbd_bin, "-s", "-c", conf], stdout=subprocess.PIPE,
                                         timeout=10).stdout)
        self.assertEqual(snap["master_pid"], pid)
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not pid_alive(pid), 15, what="the daemon to stop")
        self.assertFalse(os.path.exists(pidfile), "pid file removed at a clean stop")


class ReloadTest(LbdTestCase):

    def config(self, listen, servers, strategy="round_robin", workers=2, **kw):
        return lbd_config(listen, [{"name": "web", "strategy": strategy, "servers": servers}],
                          workers=workers, shutdown_timeout="10s", **kw)

    def test_reload_changed_pool(self):
        """Reload from b1,b2 to b3 only (other weight and strategy): new
        requests go to b3, no request fails during the reload, generation
        increments, the workers are new processes."""
        b1, b2, b3 = self.start_backends("b1", "b2", "b3")
        port = free_port()
        listen = f"127.0.0.1:{port}"
        lbd = self.start_lbd(self.config(listen, [(b1.addr, 1), (b2.addr, 1)]), listen, workers=2)
        got = [self.get("/").backend for _ in range(4)]
        self.assertEqual(got, ["b1", "b2", "b1", "b2"])
        old = lbd.worker_pids()
        master = lbd.pid

        load = LoadLoop(lbd.listen, nthreads=2, new_conn=True)
        try:
            load.wait_count(50)
            before, after = lbd.reload(self.config(listen, [(b3.addr, 7)], "weighted_round_robin"))
            self.assertEqual(after["generation"], before["generation"] + 1)

            # Old workers stop accepting once they drain; then only b3 answers.
            def old_gone():
                s = lbd.snapshot()
                return all(w["generation"] == after["generation"] or w["state"] == "draining"
                           for w in s["workers"]) and s
            wait_for(old_gone, 15, what="the old generation to drain")
            n = load.count()
            load.wait_count(n + 100)
        finally:
            load.stop()
        self.assertEqual(load.errors, [], "requests failed during the reload")
        self.assertIn("b3", load.backends)
        for _ in range(20):
            r = self.get("/")
            self.assertEqual((r.status, r.backend), (200, "b3"), r)

        snap = lbd.snapshot()
        self.assertEqual(snap["reloads"], 1)
        self.assertEqual(snap["reload_failures"], 0)
        self.assertEqual(snap["master_pid"], master)
        wait_for(lambda: all(not pid_alive(p) for p in old.values()), 15,
                 what="the old workers to exit")
        new = lbd.worker_pids()
        self.assertEqual(sorted(new), [0, 1])
        self.assertFalse(set(new.values()) & set(old.values()), f"old {old} new {new}")
        running = lbd.running_workers()
        self.assertEqual(sorted(w["pid"] for w in running), sorted(new.values()))
        self.assertTrue(all(w["generation"] == after["generation"] for w in running))
        (pool,) = [p for p in snap["pools"] if p["state"] == "active"]
        active = [s for s in pool["servers"] if s["state"] == "active"]
        self.assertEqual([(s["address"], s["weight"]) for s in active], [(b3.addr, 7)])

    def test_reload_repeatedly_under_load(self):
        """Ten reloads while clients open a new connection per request: no
        request may fail (a reload must not lose accepted connections)."""
        b1, b2 = self.start_backends("b1", "b2")
        port = free_port()
        listen = f"127.0.0.1:{port}"
        cfgs = [self.config(listen, [(b.addr, 1)]) for b in (b1, b2)]
        lbd = self.start_lbd(cfgs[0], listen, workers=2)
        load = LoadLoop(lbd.listen, nthreads=4, new_conn=True)
        try:
            load.wait_count(20)
            for i in range(10):
                lbd.reload(cfgs[(i + 1) % 2])
                n = load.count()
                load.wait_count(n + 20)
        finally:
            load.stop()
        self.assertEqual(load.errors, [], f"{len(load.errors)} of {load.ok + len(load.errors)} "
                         "requests failed across 10 reloads")
        snap = lbd.snapshot()
        self.assertEqual(snap["reloads"], 10)
        # totals include the workers that have exited.
        self.assertEqual(snap["totals"]["requests"], load.ok + len(load.errors))

    def test_reloads_under_keepalive_load_lose_no_request(self):
        """Twenty reloads, every other one changing the worker count, while
        keep-alive clients (HTTP/1.1, and HTTP/1.0 with keep-alive) send
        requests back to back and others open a connection per request:
        every request gets its whole answer, none a reset or an empty
        reply. A draining worker does not close an idle keep-alive
        connection under a client that may be sending on it: it answers the
        next request with Connection: close (drain_idle)."""
        bs = self.start_backends("b1", "b2", "b3")
        port = free_port()
        listen = f"127.0.0.1:{port}"
        servers = [(b.addr, 1) for b in bs]
        lbd = self.start_lbd(self.config(listen, servers, workers=2), listen, workers=2)
        loads = [LoadLoop(lbd.listen, nthreads=4, max_seconds=120),
                 LoadLoop(lbd.listen, nthreads=2, http10=True, max_seconds=120),
                 LoadLoop(lbd.listen, nthreads=2, new_conn=True, max_seconds=120)]
        counts = [3, 2, 1, 2]
        try:
            for ld in loads:
                ld.wait_count(20)
            for i in range(20):
                workers = counts[(i // 2) % len(counts)] if i % 2 else None
                if workers:
                    lbd.reload(self.config(listen, servers, workers=workers))
                else:
                    lbd.reload()
                # Each kind of client gets answers from the new generation
                # before the next reload.
                for ld in loads:
                    ld.wait_count(ld.count() + 10)
        finally:
            for ld in loads:
                ld.stop()
        for name, ld in zip(("HTTP/1.1 keep-alive", "HTTP/1.0 keep-alive", "new connection"),
                            loads):
            self.assertEqual(ld.errors, [], f"{name}: {len(ld.errors)} of "
                             f"{ld.ok + len(ld.errors)} requests failed across 20 reloads")
        # The keep-alive clients really reused their connections (the race
        # needs a connection that is reused).
        for ld in loads[:2]:
            self.assertGreater(ld.ok, 3 * ld.connections, (ld.ok, ld.connections))
        self.assertEqual(lbd.snapshot()["reloads"], 20)

    def test_reload_serves_already_accepted_connection(self):
        """A connection lbd accepted before a reload, whose request arrives
        just after, is answered (by the draining worker), not dropped.
        This is the deterministic form of the race that makes clients of
        test_reload_repeatedly_under_load fail: the old worker closes every
        session whose request bytes it has not read yet, even when they are
        already in the socket buffer."""
        (b1,) = self.start_backends("b1")
        port = free_port()
        listen = f"127.0.0.1:{port}"
        cfg = self.config(listen, [(b1.addr, 1)])
        lbd = self.start_lbd(cfg, listen, workers=2)
        with HttpConn(lbd.listen) as c:
            wait_for(lambda: lbd.snapshot()["totals"]["active_connections"] == 1, 10,
                     what="lbd to accept the connection")
            _, after = lbd.reload(cfg)
            wait_for(lambda: not [w for w in lbd.running_workers()
                                  if w["generation"] < after["generation"]], 10,
                     what="the old workers to start draining")
            try:
                r = c.request("/")
            except (OSError, ConnectionClosed) as e:
                self.fail(f"the accepted connection was dropped by the reload: {e!r}")
            self.assertEqual(r.status, 200, r)

    def test_reload_to_fewer_workers_hands_queued_connections_over(self):
        """A reload that lowers the worker count closes the sockets of the
        slots that go. Connections still queued on such a socket are handed
        to the remaining workers (net.ipv4.tcp_migrate_req, which lbd turns
        on with steering "kernel", the harness's default; with "client_ip"
        and the migrate program attached lbd leaves it alone), not reset.
        Made deterministic: the worker of slot 2 is stopped while clients
        connect, so its socket's queue fills; after the reload to 1 worker
        it is killed, which closes the socket. In a network namespace of its
        own: the sysctl is per namespace, and another lbd on the machine
        (another test run) would otherwise turn it on first, or a parallel
        run of this test off under our feet."""
        self.expect_worker_deaths()
        self.enter_private_netns()
        sysctl = "/proc/sys/net/ipv4/tcp_migrate_req"
        try:
            # Off first (where we may), so that lbd is seen turning it on.
            with open(sysctl, "w") as f:
                f.write("0\n")
            was_reset = True
        except OSError:
            was_reset = False
        (b1,) = self.start_backends("b1")
        port = free_port()
        listen = f"127.0.0.1:{port}"
        lbd = self.start_lbd(self.config(listen, [(b1.addr, 1)], workers=3), listen, workers=3)
        try:
            with open(sysctl) as f:
                on = f.read().strip() == "1"
        except OSError:
            on = False
        if not on:
            self.assertIn("tcp_migrate_req is off and cannot be set", lbd.log())
            self.require_capability("net.ipv4.tcp_migrate_req is off and lbd could not set it "
                                    "(needs root and Linux 5.14)")
        (victim,) = [w["pid"] for w in lbd.running_workers() if w["id"] == 2]
        os.kill(victim, signal.SIGSTOP)
        conns = []
        killed = False
        try:
            for _ in range(30):
                c = HttpConn(lbd.listen, timeout=10)
                conns.append(c)
                c.send(b"GET / HTTP/1.1\r\nHost: lbd.test\r\nConnection: close\r\n\r\n")
            # The workers that run answer theirs; the stopped one's wait.
            seen = []

            def settled():
                seen.append(lbd.snapshot()["totals"]["requests"])
                return len(seen) >= 5 and seen[-1] == seen[-5] and seen[-1] > 0
            wait_for(settled, 20, interval=0.1, what="the running workers to answer theirs")
            queued = 30 - seen[-1]
            self.assertGreater(queued, 0, "no connection queued on the stopped worker's socket")
            # The master closes its copy of the sockets of slots 1 and 2
            # before the generation moves on.
            lbd.reload(self.config(listen, [(b1.addr, 1)], workers=1))
            os.kill(victim, signal.SIGKILL)     # its socket closes with it
            killed = True
            for i, c in enumerate(conns):
                try:
                    r = c.read_response()
                except (OSError, ConnectionClosed) as e:
                    self.fail(f"connection {i} of 30 was lost when its socket closed: {e!r}")
                self.assertEqual(r.status, 200, r)
        finally:
            if not killed:                      # never a pid the master reaped
                os.kill(victim, signal.SIGKILL)
            for c in conns:
                c.close()
        self.assertEqual(lbd.snapshot()["totals"]["requests"], 30)
        if was_reset:
            self.assertIn("net.ipv4.tcp_migrate_req set to 1", lbd.log())

    def test_reload_to_unwritable_error_log_fails(self):
        """A reload whose error_log cannot be opened fails as a whole (it used
        to be applied, with the log left where it was): generation stays,
        reload_failures counts it, the log says why, lbd keeps serving."""
        (b1,) = self.start_backends("b1")
        listen = f"127.0.0.1:{free_port()}"
        lbd = self.start_lbd(self.config(listen, [(b1.addr, 1)]), listen, workers=2)
        off = lbd.log_size()
        bad = self.path("no-such-dir/error.log")
        _, snap = lbd.reload(self.config(listen, [(b1.addr, 1)],
                                         extra=f'error_log = "{bad}";'), expect_ok=False)
        self.assertEqual((snap["generation"], snap["reload_failures"]), (1, 1))
        lbd.wait_log(r"reload failed.*cannot open error_log " + re.escape(bad), since=off)
        self.assertServes(lbd)

    def test_reload_broken_config_keeps_serving(self):
        """A syntax error, an unknown key, a route to a missing pool: each
        reload fails with FILE:LINE in the log, reload_failures increments,
        the old config keeps serving, the master and workers stay."""
        (b1,) = self.start_backends("b1")
        port = free_port()
        listen = f"127.0.0.1:{port}"
        good = self.config(listen, [(b1.addr, 1)])
        lbd = self.start_lbd(good, listen, workers=2)
        path = os.path.realpath(lbd.config_path)
        master = lbd.pid
        workers = lbd.worker_pids()
        gen = lbd.snapshot()["generation"]

        lines = good.splitlines()
        cases = []
        # 1. syntax error on a line of its own
        bad = lines[:3] + ["workers = = 3;"] + lines[3:]
        cases.append(("syntax", "\n".join(bad) + "\n", 4))
        # 2. unknown top-level key
        bad = lines[:2] + ["frobnicate = 1;"] + lines[2:]
        cases.append(("unknown key", "\n".join(bad) + "\n", 3))
        # 3. route to a pool that does not exist
        i = next(k for k, ln in enumerate(lines) if 'pool = "web"' in ln and "host" in ln)
        bad = list(lines)
        bad[i] = bad[i].replace('pool = "web"', 'pool = "nope"')
        cases.append(("missing pool", "\n".join(bad) + "\n", i + 1))

        for n, (what, text, line) in enumerate(cases, 1):
            with self.subTest(what):
                at = lbd.log_size()
                before, after = lbd.reload(text, expect_ok=False)
                self.assertEqual(after["reload_failures"], n)
                self.assertEqual(after["generation"], gen)
                self.assertEqual(after["master_pid"], master)
                m = lbd.wait_log(r"\[error\].*reload failed.*", at)
                self.assertIn(f"{path}:{line}:", m.group(0), f"{what}: wrong FILE:LINE")
                for _ in range(4):
                    r = self.get("/")
                    self.assertEqual((r.status, r.backend), (200, "b1"), r)
                self.assertTrue(pid_alive(master))
                self.assertEqual(lbd.worker_pids(), workers, "the workers were not replaced")
        # And a good file again reloads fine.
        lbd.reload(good)
        self.assertEqual(lbd.snapshot()["reload_failures"], len(cases))

    def test_reload_to_taken_port_keeps_serving(self):
        """A reload adding a listener another process holds fails cleanly:
        logged with the address, reload_failures + 1, old config serves."""
        (b1,) = self.start_backends("b1")
        squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(squatter.close)
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(5)
        taken = f"127.0.0.1:{squatter.getsockname()[1]}"
        port = free_port()
        listen = f"127.0.0.1:{port}"
        lbd = self.start_lbd(self.config(listen, [(b1.addr, 1)]), listen, workers=2)
        at = lbd.log_size()
        cfg2 = lbd_config([listen, taken], [{"name": "web", "servers": [(b1.addr, 1)]}], workers=2)
        _, after = lbd.reload(cfg2, expect_ok=False)
        self.assertEqual((after["generation"], after["reload_failures"]), (1, 1))
        lbd.wait_log(rf"\[error\].*{re.escape(taken)}", at)
        self.assertEqual(http_get(listen, "/").status, 200)

    def test_reload_listener_change(self):
        """A reload can add a listener; the old one keeps working."""
        (b1,) = self.start_backends("b1")
        p1, p2 = free_port(), free_port()
        l1, l2 = f"127.0.0.1:{p1}", f"127.0.0.1:{p2}"
        cfg = lbd_config(l1, [{"name": "web", "servers": [(b1.addr, 1)]}], workers=2)
        lbd = self.start_lbd(cfg, l1, workers=2)
        cfg2 = lbd_config([l1, l2], [{"name": "web", "servers": [(b1.addr, 1)]}], workers=2)
        lbd.reload(cfg2)
        for addr in (l1, l2):
            r = wait_for(lambda: http_get(addr, "/"), 10, what=f"{addr} to answer")
            self.assertEqual(r.status, 200, r)


class SignalsTest(LbdTestCase):

    def test_usr1_reopens_logs(self):
        """error_log moved away + USR1: the file is created again and master
        and worker lines go to it."""
        (b,) = self.start_backends("b1")
        dead = f"127.0.0.1:{free_port()}"
        port = free_port()
        listen = f"127.0.0.1:{port}"
        log = self.path("error.log")
        cfg = lbd_config(listen, [{"name": "web", "servers": [(b.addr, 1)]},
                                  {"name": "dead", "servers": [(dead, 1)]}],
                         routes=[("*", "/", "web"), ("dead.test", "/", "dead")],
                         workers=2, extra=f'error_log = "{log}";')
        lbd = self.start_lbd(cfg, listen, workers=2)
        wait_for(lambda: os.path.exists(log) and "worker 1 started" in open(log).read(), 10,
                 what="the error_log to get the start lines")
        os.rename(log, log + ".1")
        lbd.signal(signal.SIGUSR1)
        wait_for(lambda: os.path.exists(log), 10, what="USR1 to create the log file again")

        # Worker lines: a request to a dead server makes its worker log a
        # warning. Go on until both workers have written to the new file
        # (each reopens when its USR1 from the master arrives).
        workers = lbd.worker_pids()

        def both_workers_logged():
            self.get("/", host="dead.test")
            text = open(log).read()
            return all(f"{pid}#worker {i}:" in text for i, pid in workers.items())
        wait_for(both_workers_logged, 15, interval=0.05,
                 what="lines from both workers in the new error_log")
        old_size = os.path.getsize(log + ".1")
        # A master line: a reload logs "reloading".
        at = os.path.getsize(log)
        lbd.reload()
        wait_for(lambda: re.search(rf"{lbd.pid}#master: reloading", open(log).read()[at:]), 10,
                 what="a master line in the new error_log")
        for _ in range(10):
            self.get("/", host="dead.test")
        self.assertEqual(os.path.getsize(log + ".1"), old_size,
                         "something still writes to the moved log file")



class ControlSocketTest(LbdTestCase):
    """lbd -s and lbd -S talk to the master over its abstract socket. The
    master waits LB_INSTANCE_WAIT_MS for a request byte (an old client sends
    none), then answers with the memfd and closes: a client slow to send
    after its connect used to fail with "Broken pipe"."""

    def _lbd(self):
        (b,) = self.start_backends("b1")
        listen = f"127.0.0.1:{free_port()}"
        return self.start_lbd(lbd_config(listen, [{"name": "web", "servers": [(b.addr, 1)]}],
                                         workers=2), listen, workers=2)

    def test_slow_client_is_answered(self):
        """Under strace, the client's first send comes 400 ms after its
        connect (the master gave up waiting after 200 ms): -s still gets the
        snapshot, -S still scales (it asks again)."""
        strace = shutil.which("strace")
        if strace is None:
            self.skipTest("no strace")
        lbd = self._lbd()
        slow = [strace, "-f", "-qq", "-o", os.devnull, "-e", "trace=sendto",
                "-e", "inject=sendto:delay_enter=400000:when=1"]
        # LeakSanitizer cannot run under a tracer (make asan builds).
        env = dict(os.environ, ASAN_OPTIONS=":".join(
            filter(None, [os.environ.get("ASAN_OPTIONS"), "detect_leaks=0"])))
        r = subprocess.run(slow + ["true"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=30)
        if r.returncode != 0:
            self.skipTest(f"strace cannot run here: {r.stderr.decode(errors='replace')}")
        for _ in range(3):
            r = subprocess.run(slow + [self.lbd_bin, "-s", "-c", lbd.config_path],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30,
                               env=env)
            self.assertEqual(r.returncode, 0, r.stderr.decode(errors="replace"))
            self.assertEqual(json.loads(r.stdout)["master_pid"], lbd.pid)
        r = subprocess.run(slow + [self.lbd_bin, "-S", "2", "-c", lbd.config_path],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30,
                           env=env)
        self.assertEqual(r.returncode, 0, r.stderr.decode(errors="replace"))
        self.assertIn(b"lbd: ok", r.stdout)

    def test_status_200_times_while_reloading(self):
        """200 lbd -s in a row while the master reloads again and again:
        not one fails."""
        lbd = self._lbd()
        stop = threading.Event()
        sent = [0]

        def reloader():
            while not stop.is_set() and sent[0] < 400:
                lbd.signal(signal.SIGHUP)
                sent[0] += 1
                stop.wait(0.05)
        t = threading.Thread(target=reloader, daemon=True)
        t.start()
        failures = []
        try:
            for _ in range(200):
                r = subprocess.run([self.lbd_bin, "-s", "-c", lbd.config_path],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=15)
                if r.returncode != 0:
                    failures.append(r.stderr.decode(errors="replace").strip())
        finally:
            stop.set()
            t.join(10)
        self.assertEqual(failures, [])
        self.assertGreater(lbd.snapshot()["generation"], 1, "no reload happened meanwhile")

class StartupTest(LbdTestCase):

    def test_refuses_taken_port(self):
        """Another process listens on the address: exit 1, naming it."""
        (b,) = self.start_backends("b1")
        squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(squatter.close)
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(5)
        port = squatter.getsockname()[1]
        listen = f"127.0.0.1:{port}"
        cfg = lbd_config(listen, [{"name": "web", "servers": [(b.addr, 1)]}], workers=2)
        lbd = self.start_lbd(cfg, listen, wait=False)
        rc = lbd.wait_exit(10)
        lbd.exit_checked = True
        self.assertEqual(rc, 1, f"exit status; log:\n{lbd.log()}")
        self.assertIn(listen, lbd.log())
        # The squatter still owns the port.
        c = socket.create_connection(("127.0.0.1", port), timeout=2)
        conn, _ = squatter.accept()
        conn.close()
        c.close()

    def test_refuses_second_instance(self):
        """A second lbd on the same config file refuses to start."""
        (b,) = self.start_backends("b1")
        lbd = self.simple_lbd([b], workers=1)
        p = subprocess.run([self.lbd_bin, "-c", lbd.config_path], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=10)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertEqual(http_get(lbd.listen, "/").status, 200)

    def test_snapshot_without_instance(self):
        """lbd -s on a config no lbd runs: exit 1 with a message."""
        conf = self.write_file(self.path("idle.conf"), "workers = 1;\n")
        p = subprocess.run([self.lbd_bin, "-s", "-c", conf], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=10)
        self.assertEqual(p.returncode, 1)
        self.assertEqual(p.stdout, b"")
        self.assertIn(b"idle.conf", p.stderr)

    def test_process_titles(self):
        """lbd: master / lbd: worker N in /proc/PID/cmdline; -w 3 gives three."""
        (b,) = self.start_backends("b1")
        port = free_port()
        listen = f"127.0.0.1:{port}"
        cfg = lbd_config(listen, [{"name": "web", "servers": [(b.addr, 1)]}], workers=2)
        lbd = self.start_lbd(cfg, listen, workers=2)
        self.assertTrue(proc_cmdline(lbd.pid)[0].startswith("lbd: master"), proc_cmdline(lbd.pid))
        pids = lbd.worker_pids()
        self.assertEqual(sorted(pids), [0, 1])
        for i, pid in pids.items():
            self.assertEqual(proc_cmdline(pid)[0], f"lbd: worker {i}")
        with open(f"/proc/{lbd.pid}/comm") as f:
            self.assertEqual(f.read().strip(), "lbd: master")
        lbd.stop()
        lbd.exit_checked = True

        port = free_port()
        listen = f"127.0.0.1:{port}"
        cfg = lbd_config(listen, [{"name": "web", "servers": [(b.addr, 1)]}], workers=2)
        lbd3 = self.start_lbd(cfg, listen, args=["-w", "3"], workers=3, name="lbd3.conf")
        pids = lbd3.worker_pids()
        self.assertEqual(sorted(pids), [0, 1, 2])
        for i, pid in pids.items():
            self.assertTrue(proc_cmdline(pid)[0].startswith(f"lbd: worker {i}"))
        self.assertEqual(len(lbd3.running_workers()), 3)
        self.assertTrue(proc_cmdline(lbd3.pid)[0].startswith("lbd: master"))

    def test_workers_option_survives_reload(self):
        """-w N overrides the file's workers, across reloads too."""
        (b,) = self.start_backends("b1")
        port = free_port()
        listen = f"127.0.0.1:{port}"
        cfg = lbd_config(listen, [{"name": "web", "servers": [(b.addr, 1)]}], workers=2)
        lbd = self.start_lbd(cfg, listen, args=["-w", "3"], workers=3)
        _, after = lbd.reload(cfg)

        def settled():
            ws = lbd.snapshot()["workers"]
            return len(ws) == 3 and all(w["generation"] == after["generation"] for w in ws)
        wait_for(settled, 15, what="three workers of the new generation, and no others")
        self.assertEqual(sorted(lbd.worker_pids()), [0, 1, 2])

    def test_pid_file(self):
        """-p writes the master pid, removed at a clean stop."""
        (b,) = self.start_backends("b1")
        port = free_port()
        listen = f"127.0.0.1:{port}"
        pidfile = self.path("lbd.pid")
        cfg = lbd_config(listen, [{"name": "web", "servers": [(b.addr, 1)]}], workers=1)
        lbd = self.start_lbd(cfg, listen, args=["-p", pidfile], workers=1)
        with open(pidfile) as f:
            self.assertEqual(int(f.read().strip()), lbd.pid)
        lbd.stop()
        self.assertFalse(os.path.exists(pidfile))
