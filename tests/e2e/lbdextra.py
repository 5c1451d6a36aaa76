"""Helpers for the strategy, health and admin end-to-end tests.

Additions to lbdtest: an admin client (/status as JSON, /metrics parsed); client
connections from a chosen source address (the whole of 127.0.0.0/8 is
loopback); a tiny threaded HTTP server that is slow (or answers 500) on
purpose; bounded parallel request runners. Python standard library only.
"""
import http.server
import json
import os
import re
import signal
import threading
import time

from lbdtest import (HttpConn, http_get, lbd_config, pid_alive, proc_children, proc_title,
                     wait_for)


# ---------------------------------------------------------------------------
# configuration

# lbdtest.lbd_config knows every pool key (hash_key, health_check,
# passive_health, circuit_breaker) and the admin group.
ext_config = lbd_config


# ---------------------------------------------------------------------------
# admin client

def admin_get(addr, path, method="GET", timeout=10.0):
    return http_get(addr, path, host="admin.test", method=method, timeout=timeout)


def admin_status(addr):
    r = admin_get(addr, "/status")
    if r.status != 200:
        raise AssertionError(f"GET /status: {r!r}")
    return json.loads(r.body)


def admin_metrics_text(addr):
    r = admin_get(addr, "/metrics")
    if r.status != 200:
        raise AssertionError(f"GET /metrics: {r!r}")
    return r.body.decode("utf-8")


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?$')
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(?:,|$)')


class Metrics:
    """Prometheus text format, parsed: samples and # TYPE lines."""

    def __init__(self, text):
        self.text = text
        self.samples = []       # (name, {labels}, float)
        self.types = {}         # family -> type
        for ln in text.splitlines():
            if not ln.strip():
                continue
            if ln.startswith("#"):
                parts = ln.split(None, 3)
                if len(parts) >= 4 and parts[1] == "TYPE":
                    self.types[parts[2]] = parts[3].strip()
                continue
            m = _SAMPLE.match(ln)
            if not m:
                raise AssertionError(f"unparsable metrics line: {ln!r}")
            labels = {}
            if m.group(2):
                pos = 0
                s = m.group(2)
                while pos < len(s):
                    lm = _LABEL.match(s, pos)
                    if not lm:
                        raise AssertionError(f"bad labels in {ln!r}")
                    labels[lm.group(1)] = lm.group(2)
                    pos = lm.end()
            self.samples.append((m.group(1), labels, float(m.group(3))))

    def select(self, name, **labels):
        return [(lb, v) for n, lb, v in self.samples
                if n == name and all(lb.get(k) == str(x) for k, x in labels.items())]

    def sum(self, name, **labels):
        return sum(v for _, v in self.select(name, **labels))

    def value(self, name, **labels):
        sel = self.select(name, **labels)
        if len(sel) != 1:
            raise AssertionError(f"{name}{labels}: {len(sel)} samples, want 1")
        return sel[0][1]

    def names(self):
        return {n for n, _, _ in self.samples}


def admin_metrics(addr):
    return Metrics(admin_metrics_text(addr))


def find_server(status, address, pool=None):
    """The server entry of ADDRESS (in POOL, or the only pool that has it)."""
    found = [s for p in status["pools"] if pool is None or p["name"] == pool
             for s in p["servers"] if s["address"] == address and s.get("state", "active") == "active"]
    if len(found) != 1:
        raise AssertionError(f"{len(found)} entries for {address} in pool {pool}: "
                             f"{json.dumps(status['pools'])[:2000]}")
    return found[0]


def wait_health(addr, address, health, pool=None, reason=None, timeout=15.0):
    """Poll /status until ADDRESS is HEALTH ("up"/"down") (and REASON)."""
    def probe():
        s = find_server(admin_status(addr), address, pool)
        if s["health"] == health and (reason is None or s["down_reason"] == reason):
            return s
        return None
    return wait_for(probe, timeout, interval=0.05,
                    what=f"{address} (pool {pool}) to be {health}" + (f"/{reason}" if reason else ""))


def wait_breaker(addr, address, state, pool=None, timeout=15.0):
    """Poll /status until ADDRESS's breaker is STATE ("closed", "open",
    "half_open"); its server entry."""
    def probe():
        s = find_server(admin_status(addr), address, pool)
        return s if s["breaker"] == state else None
    return wait_for(probe, timeout, interval=0.05,
                    what=f"{address} (pool {pool}) breaker to be {state}")


def control_pids(lbd):
    """PIDs of the master's children titled 'lbd: control' (remembered for
    the cleanup, which kills leftovers titled 'lbd:' by pid)."""
    out = []
    for pid in proc_children(lbd.pid):
        if (proc_title(pid) or "") == "lbd: control":
            lbd.seen_workers.add(pid)
            out.append(pid)
    return out


def wait_control(lbd, not_pid=None, timeout=15.0):
    """The single live control process (other than NOT_PID)."""
    def probe():
        ps = [p for p in control_pids(lbd) if p != not_pid and pid_alive(p)]
        return ps[0] if len(ps) == 1 else None
    return wait_for(probe, timeout, what="one control process")


def kill_backend(b):
    """SIGKILL a test backend by its pid and reap it."""
    if b.proc.poll() is None:
        os.kill(b.pid, signal.SIGKILL)
        b.proc.wait(10)


# ---------------------------------------------------------------------------
# clients

def run_requests(addr, jobs, nthreads=6, deadline_s=90.0, new_conn=False):
    """Run JOBS, a list of (target, headers) in parallel over NTHREADS
    keep-alive connections. Returns a list, in JOBS order, of (status,
    backend) or ("error", repr)."""
    results = [None] * len(jobs)
    nxt = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + deadline_s

    def worker():
        c = None
        while time.monotonic() < deadline:
            with lock:
                i = nxt[0]
                if i >= len(jobs):
                    break
                nxt[0] += 1
            target, headers = jobs[i]
            try:
                if c is None:
                    c = HttpConn(addr, timeout=15)
                r = c.request(target, headers=headers)
                results[i] = (r.status, r.backend)
                if new_conn or (r.header("Connection") or "").lower() == "close":
                    c.close()
                    c = None
            except Exception as e:  # noqa: BLE001 - reported to the test
                results[i] = ("error", repr(e))
                if c:
                    c.close()
                c = None
        if c:
            c.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(nthreads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(deadline_s + 20)
    return results


def tally(results):
    """{backend: count} of 200 responses, and the list of anything else."""
    per, bad = {}, []
    for r in results:
        if r is not None and r[0] == 200:
            per[r[1]] = per.get(r[1], 0) + 1
        else:
            bad.append(r)
    return per, bad


class Load:
    """Client threads doing requests until stopped (bounded by MAX_SECONDS),
    each over its own keep-alive connection. Every request is recorded as
    (t_start, t_end, status or 'error', backend or repr), times monotonic."""

    def __init__(self, addr, nthreads=4, target="/", max_seconds=60, timeout=10):
        self.addr = addr
        self.timeout = timeout
        self.target = target
        self.stop_ev = threading.Event()
        self.lock = threading.Lock()
        self.records = []
        self.deadline = time.monotonic() + max_seconds
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(nthreads)]
        for t in self.threads:
            t.start()

    def _run(self):
        c = None
        while not self.stop_ev.is_set() and time.monotonic() < self.deadline:
            t0 = time.monotonic()
            try:
                if c is None:
                    c = HttpConn(self.addr, timeout=self.timeout)
                r = c.request(self.target)
                rec = (t0, time.monotonic(), r.status, r.backend)
                if (r.header("Connection") or "").lower() == "close":
                    c.close()
                    c = None
            except Exception as e:  # noqa: BLE001 - recorded
                rec = (t0, time.monotonic(), "error", repr(e))
                if c:
                    c.close()
                c = None
            with self.lock:
                self.records.append(rec)
        if c:
            c.close()

    def snapshot(self):
        with self.lock:
            return list(self.records)

    def ok_count(self, since=None):
        return sum(1 for r in self.snapshot() if r[2] == 200 and (since is None or r[0] >= since))

    def wait_ok(self, n, since=None, timeout=30):
        wait_for(lambda: self.ok_count(since) >= n, timeout,
                 what=f"{n} successful requests" + (" since the mark" if since else ""))

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(30)
        return self.snapshot()


# ---------------------------------------------------------------------------
# a deliberately slow (or failing) origin server, in-process

class PyServer:
    """Threaded HTTP/1.1 server on 127.0.0.1:PORT answering every request
    after DELAY seconds with STATUS, body NAME, `X-Backend: NAME` and
    `Connection: close` (HEALTHY_PATH, if given: 200 at once, not counted).
    Counts requests. stop() by the test's cleanup."""

    def __init__(self, name, delay=0.0, status=200, port=None, healthy_path=None):
        self.name = name
        self.healthy_path = healthy_path     # this path always gets 200 at once
        self.delay = delay
        self.status = status
        self.requests = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self, body=True):
                health = outer.healthy_path is not None and self.path == outer.healthy_path
                with outer.lock:
                    outer.requests += 0 if health else 1
                if outer.delay and not health:
                    time.sleep(outer.delay)
                data = (outer.name + "\n").encode()
                self.send_response(200 if health else outer.status)
                self.send_header("X-Backend", outer.name)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                if body:
                    self.wfile.write(data)
                self.close_connection = True

            def do_GET(self):
                self._answer()

            def do_HEAD(self):
                self._answer(body=False)

            def log_message(self, *a):
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 128

        from lbdtest import free_port
        self.port = port or free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.httpd = Server(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def count(self):
        with self.lock:
            return self.requests

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)
