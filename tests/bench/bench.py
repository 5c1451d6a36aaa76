#!/usr/bin/python3
"""lbd against HAProxy and nginx: same machine, same backends, same client,
same run.

Every proxy forwards to the same three nginx backends (small fixed body at /,
64 KiB at /64k) with keep-alive. wrk drives each proxy in turn, interleaved
(lbd, haproxy, nginx, lbd, haproxy, nginx, ...) for --rounds rounds, and the
table shows medians: requests/s, p50/p99 latency, proxy CPU time per request
(from /proc/PID/task/*/schedstat, all processes and threads of the proxy),
peak RSS (VmHWM summed), and the ratios lbd/HAProxy and lbd/nginx. Each
run's line also shows how busy each CPU was (/proc/stat): the side at 100 %
is the one that limits the run.

Pinning (2 cores): with 1 worker each proxy runs on CPU 0 and wrk plus the
backends on CPU 1, so the proxy has a core of its own and the client never
steals from it. With 2 workers the proxies get both cores and so do wrk (two
threads) and the backends: the ratio still compares like with like.

    tests/bench/bench.py [--rounds 5] [--duration 4] [--only ka64,newconn]

--instructions instead counts the instructions lbd's worker executes per
keep-alive request (valgrind's callgrind): exact and repeatable where time
on a shared 2-core VM is not, so a change to the data path can be judged on
its own. --breaker gives lbd's pool a circuit breaker, --retries a retry
policy (no failures happen: what they cost a healthy pool); --tls counts them
over TLS 1.3. --ratelimit adds a per-client-address rate limit too high ever
to refuse (what every request pays for a limit it passes); --ratelimit refuse
one that refuses nearly every request (1r/s: what a refusal costs).
--sticky gives lbd's pool sticky sessions, every request carrying a valid
cookie (what a pinned client costs); --sticky new sends none, so every answer
gets a Set-Cookie.
one that refuses nearly every request (1r/s: what a refusal costs). --faults
configures three faults at 0 % on lbd's pool (what faults that are off cost).

The TLS scenarios (ka64-tls, newconn-tls, newconn-tls-full) give the three
proxies the same certificate (ECDSA P-256, made at start) and TLS 1.2
ciphers; in newconn-tls wrk resumes its sessions, in newconn-tls-full no
proxy lets it (every handshake full).
"""
import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
LBD = os.environ.get("LBD", os.path.join(ROOT, "build", "lbd"))

# name, connections, extra wrk args, path, workers, description, lbd's pool
# ("fixed": keepalive = 256 per server, sized like the peers' pools;
# "default": no keepalive key, what users run; the peers keep their configs)
SCENARIOS = [
    ("ka64", 64, [], "/", 1, "keep-alive, 64 connections", "fixed"),
    ("ka256-default", 256, [], "/", 1, "keep-alive, 256 connections, lbd's default pool", "default"),
    ("ka512", 512, [], "/", 1, "keep-alive, 512 connections", "fixed"),
    ("newconn", 64, ["-H", "Connection: close"], "/", 1, "new connection per request", "fixed"),
    ("64k", 64, [], "/64k", 1, "64 KiB responses, keep-alive", "fixed"),
    ("ka64-w2", 64, [], "/", 2, "keep-alive, 64 connections, 2 workers", "fixed"),
    ("newconn-w2", 64, ["-H", "Connection: close"], "/", 2, "new connection per request, 2 workers",
     "fixed"),
    ("ka64-tls", 64, [], "/", 1, "keep-alive over TLS 1.3, 64 connections", "fixed"),
    ("newconn-tls", 64, ["-H", "Connection: close"], "/", 1,
     "new TLS connection per request (resumed with a ticket, X25519)", "fixed"),
    ("newconn-tls-full", 64, ["-H", "Connection: close"], "/", 1,
     "new TLS connection per request (full handshake, ECDSA P-256, X25519)", "fixed"),
]
# Scenarios over TLS: the proxies listen with the same certificate (ECDSA
# P-256, made at start), the same TLS 1.2 ciphers (Mozilla intermediate) and
# TLS 1.3; wrk speaks TLS 1.3 and keeps the session of each of its
# connections (SSL_clear), so with session tickets on (all three proxies'
# default) every reconnection resumes: newconn-tls makes one full handshake
# per wrk connection, then resumed ones. newconn-tls-full turns resumption
# off in all three (tickets and session caches), every handshake full.
TLS_SCENARIOS = {"ka64-tls", "newconn-tls", "newconn-tls-full"}
TLS_FULL = {"newconn-tls-full"}
TLS_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
               "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
               "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
               "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305")
# lbd.conf.in's @KEEPALIVE@ for each kind of pool.
LBD_POOLS = {"fixed": " keepalive = 256;", "default": ""}
# lbd.conf.in's @RATELIMIT@: nothing, or a per-IP limit that never refuses
# ("pass") or refuses nearly everything ("refuse").
LBD_RATELIMIT = {
    "pass": 'rate_limits = ( { name = "per_ip"; rate = "1000000r/s"; burst = 1000000; } );\n'
            'routes = ( { pool = "be"; rate_limits = [ "per_ip" ]; } );',
    "refuse": 'rate_limits = ( { name = "per_ip"; rate = "1r/s"; } );\n'
              'routes = ( { pool = "be"; rate_limits = [ "per_ip" ]; } );',
}
PROXIES = ["lbd", "haproxy", "nginx"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Extra keys of lbd's pool (--breaker, --retries, --sticky).
POOL_EXTRA = ""
# Extra wrk arguments of the --instructions run (--sticky hit: lbd's cookie).
WRK_EXTRA = []
STICKY_SECRET = "bench-sticky-secret-0123456789"


def sticky_cookie(pool, address, secret=STICKY_SECRET):
    """lbd's sticky cookie value for ADDRESS (README: Sticky sessions)."""
    import base64
    import hashlib
    import hmac
    mac = hmac.new(secret.encode(), b"lbd-sticky-v1\0" + pool.encode() + b"\0" + address.encode(),
                   hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac[:12]).decode()


# Extra top-level lbd settings (--faults), after @RATELIMIT@.
LBD_EXTRA = ""
# --faults: three faults on lbd's pool, all at 0 % (what each request pays
# for faults that are configured but off).
LBD_FAULTS = ('faults = ( { name = "slow"; pool = "be"; percent = 0; delay = "200ms"; },\n'
              '           { name = "errors"; pool = "be"; percent = 0; abort = 503; },\n'
              '           { name = "drop"; pool = "be"; percent = 0; reset = true; } );\n')
# lbd's listener steering (--steering): "kernel" by default, the peers' way
# (wrk connects from 127.0.0.1 only, and client_ip steering sends one
# address to one worker).
STEERING = "kernel"


def fill(template, path, values):
    values = dict(tls_values(False, ""), **dict(values, POOL_EXTRA=POOL_EXTRA, STEERING=STEERING))
    if "RATELIMIT" in values:
        values["RATELIMIT"] += "\n" + LBD_EXTRA
    with open(os.path.join(HERE, template)) as f:
        text = f.read()
    for k, v in values.items():
        text = text.replace("@%s@" % k, str(v))
    with open(path, "w") as f:
        f.write(text)


def wait_port(port, deadline=10.0):
    end = time.time() + deadline
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("port %d never accepted" % port)


def tree(pid):
    """PID and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in os.listdir("/proc/%d/task" % p):
                with open("/proc/%d/task/%s/children" % (p, t)) as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def cpu_ns(pids):
    total = 0
    for p in pids:
        try:
            for t in os.listdir("/proc/%d/task" % p):
                with open("/proc/%d/task/%s/schedstat" % (p, t)) as f:
                    total += int(f.read().split()[0])
        except OSError:
            pass
    return total


def cpu_busy():
    """Per-CPU (busy, total) jiffies from /proc/stat."""
    out = []
    with open("/proc/stat") as f:
        for line in f:
            if re.match(r"cpu\d", line):
                v = [int(x) for x in line.split()[1:9]]
                out.append((sum(v) - v[3] - v[4], sum(v)))
    return out


def mem_kb(pids, field):
    total = 0
    for p in pids:
        try:
            with open("/proc/%d/status" % p) as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def make_cert(workdir):
    """An ECDSA P-256 certificate for the TLS scenarios: bench.pem and
    bench.key, and both in bench-full.pem (HAProxy's crt)."""
    pem, key = os.path.join(workdir, "bench.pem"), os.path.join(workdir, "bench.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", pem, "-days", "2",
                    "-subj", "/CN=bench.test", "-addext", "subjectAltName=DNS:bench.test"],
                   check=True, capture_output=True)
    with open(os.path.join(workdir, "bench-full.pem"), "w") as f:
        f.write(open(pem).read() + open(key).read())


def tls_values(tls, workdir):
    """The templates' TLS placeholders: empty for plain HTTP. TLS "full":
    no resumption (no tickets, no session cache: nginx has none by
    default)."""
    if not tls:
        return {"LBD_TLS": "", "HAPROXY_TLS": "", "HAPROXY_GLOBAL": "", "PROTO": "http",
                "NGINX_SSL": "", "NGINX_TLS": ""}
    full = tls == "full"
    return {
        "LBD_TLS": ' tls = { certificates = ( { cert = "%s/bench.pem"; key = "%s/bench.key"; } );'
                   ' ciphers = "%s";%s };' % (workdir, workdir, TLS_CIPHERS,
                                              " session_tickets = false;" if full else ""),
        "HAPROXY_TLS": " ssl crt %s/bench-full.pem ciphers %s ssl-min-ver TLSv1.2%s"
                       % (workdir, TLS_CIPHERS, " no-tls-tickets" if full else ""),
        "HAPROXY_GLOBAL": "tune.ssl.cachesize 0" if full else "",
        "PROTO": "https",
        "NGINX_SSL": "ssl ",
        "NGINX_TLS": "ssl_certificate %s/bench.pem; ssl_certificate_key %s/bench.key; "
                     "ssl_protocols TLSv1.2 TLSv1.3; ssl_ciphers %s; ssl_session_tickets %s;"
                     % (workdir, workdir, TLS_CIPHERS, "off" if full else "on"),
    }


class Proxy:
    def __init__(self, name, workdir, backends, workers, pool="fixed", tls=False):
        self.name, self.dir, self.workers, self.tls = name, workdir, workers, tls
        self.port = free_port()
        listen = "127.0.0.1:%d" % self.port
        values = {"WORKERS": workers, "DIR": workdir, "LISTEN": listen,
                  "B1": backends[0], "B2": backends[1], "B3": backends[2],
                  "KEEPALIVE": LBD_POOLS[pool], "RATELIMIT": ""}
        values.update(tls_values(tls, workdir))
        cpus = "0" if workers == 1 else "0,1"
        tag = "%d" % workers if pool == "fixed" else "%d-%s" % (workers, pool)
        tag += "-tlsfull" if tls == "full" else "-tls" if tls else ""
        if name == "lbd":
            conf = os.path.join(workdir, "lbd-%s.conf" % tag)
            fill("lbd.conf.in", conf, values)
            cmd = [LBD, "-c", conf]
        elif name == "haproxy":
            conf = os.path.join(workdir, "haproxy-%s.cfg" % tag)
            fill("haproxy.cfg.in", conf, values)
            cmd = ["haproxy", "-db", "-f", conf]
        else:
            conf = os.path.join(workdir, "nginx-proxy-%s.conf" % tag)
            fill("nginx-proxy.conf.in", conf, values)
            cmd = ["nginx", "-c", conf, "-g", "daemon off;"]
        self.log = open(os.path.join(workdir, "%s-%s.log" % (name, tag)), "w")
        self.proc = subprocess.Popen(["taskset", "-c", cpus] + cmd, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        wait_port(self.port)
        time.sleep(0.3)     # workers up

    def pids(self):
        return tree(self.proc.pid)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM if self.name != "nginx" else signal.SIGQUIT)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            for p in self.pids():
                os.kill(p, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


def steer_stats(pid):
    """(runs, ns) of the BPF programs process PID holds (lbd's steering
    program), from their fdinfo: counted while kernel.bpf_stats_enabled."""
    runs = ns = 0
    fdinfo = "/proc/%d/fdinfo" % pid
    for fd in os.listdir(fdinfo):
        try:
            with open(os.path.join(fdinfo, fd)) as f:
                info = dict(ln.split(":", 1) for ln in f.read().splitlines() if ":" in ln)
        except OSError:
            continue
        if "prog_id" in info and "run_cnt" in info:
            runs += int(info["run_cnt"])
            ns += int(info["run_time_ns"])
    return runs, ns


class Direct:
    """No proxy: wrk straight to one backend, both on the client's core.
    Behind a proxy that core does the same work and more (the proxy's
    sockets, its wakeups, the headers it adds), so with 1 worker and 64
    connections this rate is about the most a proxy can reach. With 512 it
    is a reference only: a proxy pooling its backend connections can spare
    the backend part of the cost of 512 connections. (With a new connection
    per request the backend's own accept and close would land on the
    client's core too, and with 2 workers nothing is pinned: no run there.)"""
    name = "direct"

    def __init__(self, backend):
        self.port = int(backend.split(":")[1])

    def pids(self):
        return []


def parse_latency(text, label):
    m = re.search(r"^\s*%s\s+([\d.]+)(us|ms|s)\s*$" % re.escape(label), text, re.M)
    if not m:
        return float("nan")
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
    return float(m.group(1)) * scale


def cpu_list(spec):
    """taskset's "0", "0-1", "0,2-3" as a list of CPU numbers."""
    cpus = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cpus += range(int(lo), int(hi or lo) + 1)
    return cpus


def run_wrk(proxy, conns, extra, path, duration, client_cpus, backend_pids):
    url = "%s://127.0.0.1:%d%s" % ("https" if getattr(proxy, "tls", False) else "http",
                                   proxy.port, path)
    pids = proxy.pids()
    before, busy0, back0 = cpu_ns(pids), cpu_busy(), cpu_ns(backend_pids)
    # One wrk thread per CPU the client may use: a single thread would make
    # wrk itself the limit once it shares both cores (2 workers).
    out = subprocess.run(["taskset", "-c", client_cpus, "wrk", "-t%d" % len(cpu_list(client_cpus)),
                          "-c%d" % conns,
                          "-d%ds" % duration, "--latency"] + extra + [url],
                         capture_output=True, text=True, timeout=duration + 60).stdout
    after, busy1, back1 = cpu_ns(pids), cpu_busy(), cpu_ns(backend_pids)
    util = [100.0 * (b1 - b0) / max(t1 - t0, 1) for (b0, t0), (b1, t1) in zip(busy0, busy1)]
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    return {
        "rps": rps,
        "p50": parse_latency(out, "50%"),
        "p99": parse_latency(out, "99%"),
        "cpu_us": (after - before) / 1000.0 / max(reqs, 1),
        "backend_us": (back1 - back0) / 1000.0 / max(reqs, 1),
        "rss_kb": mem_kb(pids, "VmHWM"),
        "errors": errors,
        "util": util,
    }


def idle_memory(proxy, n):
    """Memory per idle keep-alive client connection: N connections, one
    request each, answered before the next connection opens, left open;
    RSS growth of the proxy divided by N. One request at a time, so what is
    measured is the idle connection, not backend connections opened for a
    burst of requests in flight (how many depends on timing)."""
    req = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    socks = []

    def one():
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        socks.append(s)
        s.sendall(req)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                raise RuntimeError("%s closed an idle-memory connection" % proxy.name)
            buf += chunk

    try:
        one()           # backend connections and pools exist before the baseline
        time.sleep(0.5)
        before = mem_kb(proxy.pids(), "VmRSS")
        for _ in range(n):
            one()
        time.sleep(1.0)
        after = mem_kb(proxy.pids(), "VmRSS")
    finally:
        for s in socks:
            s.close()
    return (after - before) * 1024.0 / n


def instructions(work, backends, duration, pool, ratelimit=None):
    """Instructions per keep-alive request in lbd's worker (1 worker, 64
    connections, the POOL kind of pool, with RATELIMIT "pass" or "refuse" a
    per-IP limit, see LBD_RATELIMIT), counted by callgrind after a warm-up
    run."""
    port = free_port()
    conf = os.path.join(work, "lbd-callgrind.conf")
    fill("lbd.conf.in", conf, {"WORKERS": 1, "DIR": work, "LISTEN": "127.0.0.1:%d" % port,
                               "B1": backends[0], "B2": backends[1], "B3": backends[2],
                               "KEEPALIVE": LBD_POOLS[pool],
                               "RATELIMIT": LBD_RATELIMIT[ratelimit] if ratelimit else ""})
    out = os.path.join(work, "callgrind.out")
    log = open(os.path.join(work, "lbd-callgrind.log"), "w")
    # Nothing is counted until the worker's instrumentation is switched on
    # after a warm-up: not the start, not the master or the control process.
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--trace-children=yes",
                             "--instr-atstart=no", "--callgrind-out-file=" + out + ".%p",
                             LBD, "-c", conf], stdout=log, stderr=subprocess.STDOUT)
    url = "http://127.0.0.1:%d/" % port
    try:
        wait_port(port, deadline=60)
        subprocess.run(["wrk", "-t1", "-c64", "-d2s"] + WRK_EXTRA + [url], capture_output=True,
                       timeout=60)
        # The worker is the child that served the warm-up (under valgrind
        # the process titles are not visible).
        children = tree(proc.pid)[1:]
        if not children:
            raise RuntimeError("lbd under valgrind started no worker (see %s)" % log.name)
        worker = max(children, key=lambda p: cpu_ns([p]))
        subprocess.run(["callgrind_control", "-i", "on", str(worker)], capture_output=True,
                       check=True)
        text = subprocess.run(["wrk", "-t1", "-c64", "-d%ds" % duration] + WRK_EXTRA + [url],
                              capture_output=True, text=True, timeout=duration + 60).stdout
        reqs = int(re.search(r"(\d+) requests in", text).group(1))
        # The dump holds what was counted since the switch: the run.
        subprocess.run(["callgrind_control", "-d", str(worker)], capture_output=True, check=True)
        total = 0
        mine = re.compile(r"callgrind\.out\.%d(\.\d+)?$" % worker)
        for f in [f for f in os.listdir(work) if mine.match(f)]:
            with open(os.path.join(work, f)) as fh:
                m = re.search(r"^(?:summary|totals): (\d+)", fh.read(), re.M)
                total = max(total, int(m.group(1)) if m else 0)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
    return total / max(reqs, 1), reqs


def instructions_tls(work, backends, duration, pool):
    """The same over TLS 1.3 (the ka64-tls certificate and ciphers), with 8
    connections: under valgrind a handshake takes long, so one wrk run
    opens them during a warm-up and goes on, and the instructions are
    counted in the middle of it, the requests from lbd -s (the window holds
    no handshake: checked)."""
    if not os.path.exists(os.path.join(work, "bench.pem")):
        make_cert(work)
    port = free_port()
    conf = os.path.join(work, "lbd-callgrind-tls.conf")
    values = {"WORKERS": 1, "DIR": work, "LISTEN": "127.0.0.1:%d" % port,
              "B1": backends[0], "B2": backends[1], "B3": backends[2],
              "KEEPALIVE": LBD_POOLS[pool], "RATELIMIT": ""}
    values.update(tls_values(True, work))
    fill("lbd.conf.in", conf, values)
    out = os.path.join(work, "callgrind-tls.out")
    log = open(os.path.join(work, "lbd-callgrind-tls.log"), "w")
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--trace-children=yes",
                             "--instr-atstart=no", "--callgrind-out-file=" + out + ".%p",
                             LBD, "-c", conf], stdout=log, stderr=subprocess.STDOUT)
    warmup = 10

    def snap():
        totals = json.loads(subprocess.run([LBD, "-s", "-c", conf], capture_output=True,
                                           text=True, timeout=30).stdout)["totals"]
        hs = totals["tls_handshakes"]
        return totals["requests"], hs["full"] + hs["resumed"]
    wrk = None
    try:
        wait_port(port, deadline=60)
        wrk = subprocess.Popen(["wrk", "-t1", "-c8", "-d%ds" % (warmup + duration + 10),
                                "--timeout", "30s", "https://127.0.0.1:%d/" % port],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(warmup)
        children = tree(proc.pid)[1:]
        worker = max(children, key=lambda p: cpu_ns([p]))
        r0, h0 = snap()
        subprocess.run(["callgrind_control", "-i", "on", str(worker)], capture_output=True,
                       check=True)
        time.sleep(duration)
        subprocess.run(["callgrind_control", "-d", str(worker)], capture_output=True, check=True)
        r1, h1 = snap()
        total = 0
        mine = re.compile(r"callgrind-tls\.out\.%d(\.\d+)?$" % worker)
        for f in [f for f in os.listdir(work) if mine.match(f)]:
            with open(os.path.join(work, f)) as fh:
                m = re.search(r"^(?:summary|totals): (\d+)", fh.read(), re.M)
                total = max(total, int(m.group(1)) if m else 0)
    finally:
        if wrk is not None:
            wrk.kill()
            wrk.wait()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
    if h1 != h0:
        print("bench: %d handshakes during the count: the figure includes them" % (h1 - h0))
    return total / max(r1 - r0, 1), r1 - r0


def has_bound(sc, ncpu):
    """Whether the no-proxy run bounds this scenario (see Direct; the
    backends speak no TLS)."""
    return sc[4] == 1 and ncpu > 1 and "Connection: close" not in sc[2] and \
        sc[0] not in TLS_SCENARIOS


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=4)
    ap.add_argument("--only", default="", help="comma-separated scenario names")
    ap.add_argument("--idle", type=int, default=9000,
                    help="idle connections (0: skip); the fd hard limit here is 20000")
    ap.add_argument("--markdown", default="", help="also write the table to this file")
    ap.add_argument("--instructions", action="store_true",
                    help="only count lbd's instructions per keep-alive request (callgrind)")
    ap.add_argument("--tls", action="store_true",
                    help="with --instructions: over TLS 1.3 (8 connections)")
    ap.add_argument("--pool", choices=sorted(LBD_POOLS), default="fixed",
                    help="with --instructions: lbd's pool, fixed (keepalive = 256, the "
                         "default) or default (no keepalive key)")
    ap.add_argument("--faults", action="store_true",
                    help="lbd's pool with three faults (delay, abort, reset) at 0 %%")
    ap.add_argument("--breaker", action="store_true",
                    help="lbd's pool with circuit_breaker (its defaults: both triggers)")
    ap.add_argument("--retries", action="store_true",
                    help="lbd's pool with retries (attempts = 3, per_try_timeout, the rest "
                         "default)")
    ap.add_argument("--ratelimit", nargs="?", const="pass", choices=sorted(LBD_RATELIMIT),
                    help="with --instructions: a per-IP rate limit that never refuses (pass), "
                         "or refuses nearly every request (refuse)")
    ap.add_argument("--sticky", nargs="?", const="hit", choices=("hit", "new"),
                    help="with --instructions: lbd's pool with sticky sessions; every request "
                         "carries a valid cookie (hit), or none and gets one (new)")
    ap.add_argument("--steering", choices=["kernel", "client_ip"], default="kernel",
                    help="lbd's listener steering (default kernel, as the peers); client_ip "
                         "also reports the eBPF program's time per connection")
    args = ap.parse_args()
    global POOL_EXTRA, LBD_EXTRA, STEERING
    STEERING = args.steering
    if args.faults:
        LBD_EXTRA += LBD_FAULTS
    if args.breaker:
        POOL_EXTRA += "circuit_breaker = { }; "
    if args.retries:
        POOL_EXTRA += 'retries = { attempts = 3; per_try_timeout = "2s"; }; '
    if args.sticky:
        POOL_EXTRA += 'sticky = { secret = "%s"; }; ' % STICKY_SECRET


    for tool in ("wrk", "haproxy", "nginx", "taskset") + (("valgrind", "callgrind_control")
                                                            if args.instructions else ()):
        if shutil.which(tool) is None:
            sys.exit("bench: %s not found (make deps installs it)" % tool)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ncpu = os.cpu_count() or 1
    scenarios = [s for s in SCENARIOS if not args.only or s[0] in args.only.split(",")]

    work = tempfile.mkdtemp(prefix="lbd-bench-")
    # nginx's workers run as an unprivileged user: they must be able to read.
    os.chmod(work, 0o755)
    os.makedirs(os.path.join(work, "www"))
    with open(os.path.join(work, "www", "64k"), "wb") as f:
        f.write(os.urandom(65536))
    os.chmod(os.path.join(work, "www", "64k"), 0o644)
    backends = ["127.0.0.1:%d" % free_port() for _ in range(3)]
    if args.sticky == "hit":
        # lbd's pool is named "be" (lbd.conf.in); a client pinned to the
        # first server, as a browser after its first answer.
        WRK_EXTRA.extend(["-H", "Cookie: session=abc123; lbd_srv=%s"
                          % sticky_cookie("be", backends[0])])
    fill("nginx-backends.conf.in", os.path.join(work, "backends.conf"),
         {"DIR": work, "B1": backends[0], "B2": backends[1], "B3": backends[2]})
    back = subprocess.Popen(["taskset", "-c", "1" if ncpu > 1 else "0", "nginx", "-c",
                             os.path.join(work, "backends.conf"), "-g", "daemon off;"])
    results = {}        # (scenario, proxy) -> list of runs
    idle = {}
    stats_sysctl = "/proc/sys/kernel/bpf_stats_enabled"
    stats_was = None
    if STEERING == "client_ip":
        try:
            with open(stats_sysctl) as f:
                stats_was = f.read().strip()
            with open(stats_sysctl, "w") as f:
                f.write("1\n")
        except OSError:
            print("bench: cannot turn kernel.bpf_stats_enabled on: no per-connection time "
                  "of the steering program")
    try:
        for b in backends:
            wait_port(int(b.split(":")[1]))
        if args.instructions:
            if args.tls:
                per, reqs = instructions_tls(work, backends, args.duration, args.pool)
            else:
                per, reqs = instructions(work, backends, args.duration, args.pool, args.ratelimit)
            print("lbd worker: %.0f instructions per keep-alive request%s (callgrind, %d requests%s%s%s)"
                  % (per, " over TLS" if args.tls else "", reqs,
                     ", sticky (%s)" % args.sticky if args.sticky else "",
                     ", default pool" if args.pool == "default" else "",
                     ", per-IP rate limit (%s)" % args.ratelimit if args.ratelimit else "")
                  + (", three faults at 0 %" if args.faults else ""))
            scenarios, args.idle = [], 0
        for workers in sorted({s[4] for s in scenarios}):
            proxies = {name: Proxy(name, work, backends, workers) for name in PROXIES}
            if any(s[0] in TLS_SCENARIOS for s in scenarios if s[4] == workers):
                if not os.path.exists(os.path.join(work, "bench.pem")):
                    make_cert(work)
                for name in PROXIES:
                    proxies[name + "-tls"] = Proxy(name, work, backends, workers, tls=True)
                    if any(s[0] in TLS_FULL for s in scenarios if s[4] == workers):
                        proxies[name + "-tlsfull"] = Proxy(name, work, backends, workers,
                                                           tls="full")
            # Other pools of lbd's than the fixed one: an instance each, for
            # the scenarios that ask for it.
            for pool in sorted({s[6] for s in scenarios if s[4] == workers} - {"fixed"}):
                proxies["lbd-" + pool] = Proxy("lbd", work, backends, workers, pool)
            direct = Direct(backends[0])
            client_cpus = "1" if workers == 1 and ncpu > 1 else "0-%d" % (ncpu - 1)
            try:
                for sc in [s for s in scenarios if s[4] == workers]:
                    name, conns, extra, path = sc[0], sc[1], sc[2], sc[3]
                    names = PROXIES + (["direct"] if has_bound(sc, ncpu) else [])
                    for r in range(args.rounds):
                        # Each round starts with the next proxy: none always
                        # runs first (after a pause, or after a given peer).
                        for p in names[r % len(names):] + names[:r % len(names)]:
                            target = direct if p == "direct" else \
                                proxies[p + "-tlsfull"] if sc[0] in TLS_FULL else \
                                proxies[p + "-tls"] if sc[0] in TLS_SCENARIOS else \
                                proxies["lbd-" + sc[6]] if p == "lbd" and sc[6] != "fixed" else \
                                proxies[p]
                            run = run_wrk(target, conns, extra, path, args.duration, client_cpus,
                                          tree(back.pid))
                            results.setdefault((name, p), []).append(run)
                            print("%-10s round %d %-8s %9.0f req/s p99 %7.2f ms %6.1f us/req  "
                                  "backends %4.1f us/req  cpu busy %s%s" %
                                  (name, r + 1, p, run["rps"], run["p99"], run["cpu_us"],
                                   run["backend_us"],
                                   "/".join("%.0f%%" % u for u in run["util"]),
                                   "  (%d errors: run invalid)" % run["errors"]
                                   if run["errors"] else ""), flush=True)
            finally:
                if stats_was is not None:
                    runs, ns = steer_stats(proxies["lbd"].proc.pid)
                    print("steering program (%d workers): %d runs, %.0f ns per connection"
                          % (workers, runs, ns / max(runs, 1)), flush=True)
                for p in proxies.values():
                    p.stop()
        if args.idle > 0:
            # Fresh instances: a heap grown by the load runs would hide the cost.
            for p in PROXIES:
                proxy = Proxy(p, work, backends, 1)
                try:
                    idle[p] = idle_memory(proxy, args.idle)
                finally:
                    proxy.stop()
                print("idle       %-8s %7.0f bytes per idle connection" % (p, idle[p]), flush=True)
    finally:
        if stats_was is not None:
            with open(stats_sysctl, "w") as f:
                f.write(stats_was + "\n")
        back.send_signal(signal.SIGQUIT)
        back.wait(timeout=15)

    if not scenarios:
        shutil.rmtree(work, ignore_errors=True)
        return

    def med(name, p, key):
        return statistics.median(run[key] for run in results[(name, p)])

    def busy(name, p):
        """Median busy % of each CPU ("CPU 0/CPU 1"): with 1 worker, the
        proxy's core, then the client's (wrk and the backends)."""
        runs = results[(name, p)]
        return "/".join("%.0f" % statistics.median(r["util"][i] for r in runs)
                        for i in range(len(runs[0]["util"])))

    def paired(name, peer):
        """Median of the per-round ratios: the runs of one round are seconds
        apart, so a drift of the machine between rounds cancels out."""
        return statistics.median(a["rps"] / b["rps"] for a, b in
                                 zip(results[(name, "lbd")], results[(name, peer)]))

    lines = []
    lines.append("| scenario | lbd req/s | HAProxy req/s | nginx req/s | lbd/HAProxy | lbd/nginx "
                 "| per-round ratio (HAP/ngx) | no proxy req/s (lbd's share) "
                 "| p50 ms (lbd/HAP/ngx) | p99 ms (lbd/HAP/ngx) | CPU us/req (lbd/HAP/ngx) "
                 "| cores busy % (lbd; HAP; ngx) | peak RSS MiB (lbd/HAP/ngx) | errors |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for sc in scenarios:
        name = sc[0]
        rps = {p: med(name, p, "rps") for p in PROXIES}
        errs = sum(run["errors"] for p in PROXIES + ["direct"] for run in results.get((name, p), []))
        bound = "-"
        if (name, "direct") in results:
            d = statistics.median(run["rps"] for run in results[(name, "direct")])
            bound = "%.0f (%.0f %%)" % (d, 100.0 * rps["lbd"] / max(d, 1))
        lines.append("| %s (%s) | %.0f | %.0f | %.0f | **%.2f** | **%.2f** | %.2f / %.2f | %s "
                     "| %s | %s | %s | %s | %s | %d |" % (
            name, sc[5], rps["lbd"], rps["haproxy"], rps["nginx"],
            rps["lbd"] / rps["haproxy"], rps["lbd"] / rps["nginx"],
            paired(name, "haproxy"), paired(name, "nginx"), bound,
            " / ".join("%.2f" % med(name, p, "p50") for p in PROXIES),
            " / ".join("%.2f" % med(name, p, "p99") for p in PROXIES),
            " / ".join("%.1f" % med(name, p, "cpu_us") for p in PROXIES),
            "; ".join(busy(name, p) for p in PROXIES),
            " / ".join("%.1f" % (max(r["rss_kb"] for r in results[(name, p)]) / 1024.0)
                       for p in PROXIES),
            errs))
    if idle:
        lines.append("")
        lines.append("Memory per idle keep-alive client connection (%d connections): %s" % (
            args.idle, ", ".join("%s %.0f bytes" % (p, idle[p]) for p in PROXIES)))
    lines.append("")
    lines.append("Medians of %d interleaved rounds of %d s; %d CPUs; %s." % (
        args.rounds, args.duration, ncpu,
        subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.split("\n")[0]
        + ", " + subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()))
    table = "\n".join(lines)
    print()
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
