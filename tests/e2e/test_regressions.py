"""Regressions found by review: each test failed before its fix.

- Connection naming a framing header must not strip it (smuggling);
- a response on a connection lbd closes is delivered whole to a slow reader;
- pipelined requests lbd answers itself neither recurse nor buffer without end;
- timeouts restart at each phase (idle after a response, a pooled
  connection taken again);
- only safe methods are retried on a stale pooled connection;
- an empty line after a keep-alive request, then silence: 408, not a crash
  (the answer once went to buffers the idle connection had given back);
- an absolute-form "http://h?x" is routed as the "/?x" it is forwarded as;
- a client that reads slowly is not cut off by backend_response, by
  client_idle, or by a graceful stop, while its answer is still leaving;
- backend_response bounds the whole response head: a backend trickling it
  a byte at a time, or sending 103 Early Hints without end, gets a 504;
- a client that closes while its request waits for the response head is
  noticed: the exchange stops, its backend connection is closed, 499.
"""
import re
import signal
import socket
import time

from lbdtest import (HttpConn, LbdTestCase, RawServer, connect, free_port, lbd_config,
                     parse_status, pid_alive, raw_exchange, recv_until_eof, sanitized, vm_rss_kib,
                     wait_for)


class RawBackend(RawServer):
    """A backend that answers each connection's first request with a
    keep-alive 200 and closes on the second without answering: what a
    server closing an idle keep-alive connection looks like to a proxy
    that reuses it at that moment. Records every request line it sees."""

    def __init__(self):
        self.seen = []
        super().__init__()

    def _serve(self, c):
        buf = b""
        with c:
            for n in (1, 2):
                got = self.read_head(c, buf)
                if got is None:
                    return
                head, buf = got
                with self.lock:
                    self.seen.append(head.split(b"\r\n", 1)[0].decode())
                if n == 2:
                    return      # close without answering
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


class RegressionTest(LbdTestCase):

    # An answer larger than the kernel can queue towards a stalled client
    # (a 4 MiB send buffer at most, tcp_wmem) and a buffer that takes all
    # of it: the exchange completes on lbd's side with megabytes still in
    # its own buffer.
    HELD = 8000000
    BIG_BUFFER = 'limits = { buffer = "16m"; };'

    def _stalled_reader(self, lbd, size):
        """A keep-alive request for SIZE bytes from a client with a 4 KiB
        receive buffer that reads nothing: most of the answer ends up held
        by lbd. (Reading it all through such a window would take minutes,
        so the tests judge lbd's side: is the connection still served?)"""
        s = socket.socket()
        self.addCleanup(s.close)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        host, port = lbd.listen.rsplit(":", 1)
        s.connect((host, int(port)))
        s.sendall(b"GET /?size=%d HTTP/1.1\r\nHost: a\r\n\r\n" % size)
        wait_for(lambda: s.recv(1, socket.MSG_PEEK) == b"H", 10, what="the answer to start")
        return s

    def _open_connections(self, lbd):
        return lbd.snapshot()["totals"]["active_connections"]

    def _wait_answer_held(self, lbd):
        """The exchange is over on lbd's side (the whole answer is in its
        buffers and the kernel's, the backend connection given back), while
        the client has read almost none of it."""
        def done():
            (srv,) = lbd.snapshot()["pools"][0]["servers"]
            return srv["requests"] == 1 and srv["active"] == 0
        wait_for(done, 20, what="lbd to hold the whole answer")

    def test_stalled_reader_outlasts_backend_response_timeout(self):
        """The backend sent everything; the client reads slower than
        backend_response. That is not the backend timing out: the
        connection stays served and the backend is not counted as failing
        (lbd used to cut the answer and blame the backend)."""
        b = self.start_backend("b1")
        lbd = self.simple_lbd([b], workers=1, timeouts={"backend_response": "1s"},
                              extra=self.BIG_BUFFER)
        off = lbd.log_size()
        # The kernel's share, a full client-side buffer, and half a buffer
        # more: the backend can send it all, and lbd holds the last part.
        self._stalled_reader(lbd, 4000000 + 16 * 1048576 + 8000000)
        time.sleep(2.5)         # past backend_response, nothing read
        self.assertEqual(self._open_connections(lbd), 1, "the answer was cut")
        (srv,) = lbd.snapshot()["pools"][0]["servers"]
        self.assertEqual(srv["failures"], 0, srv)
        self.assertNotIn("mid-response", lbd.log_since(off))

    def test_stalled_reader_outlasts_client_idle(self):
        """client_idle is for a connection waiting for its next request, not
        for one whose answer is still leaving (that is the send timeout's)."""
        b = self.start_backend("b1")
        lbd = self.simple_lbd([b], workers=1, timeouts={"client_idle": "1s"},
                              extra=self.BIG_BUFFER)
        self._stalled_reader(lbd, self.HELD)
        self._wait_answer_held(lbd)
        time.sleep(2.5)         # past client_idle, nothing read
        self.assertEqual(self._open_connections(lbd), 1, "the answer was cut")

    def test_graceful_stop_lets_the_last_answer_leave(self):
        """SIGTERM while an answer is still leaving: the draining worker stays
        until it has left (bounded by the send timeout), it does not close
        the connection under it. Once the client goes, lbd exits 0."""
        b = self.start_backend("b1")
        lbd = self.simple_lbd([b], workers=1, shutdown_timeout="20s", extra=self.BIG_BUFFER)
        worker = lbd.worker_pids()[0]
        s = self._stalled_reader(lbd, self.HELD)
        self._wait_answer_held(lbd)
        lbd.signal(signal.SIGTERM)
        time.sleep(1.5)
        self.assertTrue(pid_alive(worker), "the worker closed a connection still being answered")
        s.close()
        self.assertEqual(lbd.wait_exit(20), 0, lbd.log()[-2000:])
        lbd.exit_checked = True

    def test_connection_naming_content_length_is_refused(self):
        b = self.start_backend("b1")
        lbd = self.simple_lbd([b], workers=1)
        before = b.stats()["requests"]
        inner = (b"GET /admin-secret HTTP/1.1\r\nHost: internal\r\n"
                 b"X-Forwarded-For: 127.0.0.1\r\n\r\n")
        req = (b"POST /public HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\n"
               b"Content-Length: %d\r\n\r\n" % len(inner)) + inner
        raw = raw_exchange(lbd.listen, req)
        self.assertEqual(parse_status(raw), 400, raw[:200])
        for name in (b"transfer-encoding", b"host"):
            raw = raw_exchange(lbd.listen, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: " + name +
                               b"\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
            self.assertEqual(parse_status(raw), 400, raw[:200])
        self.assertEqual(b.stats()["requests"], before + 1,
                         "only the /stats request itself reached the backend")

    def test_slow_reader_gets_the_whole_response_on_a_closing_connection(self):
        b = self.start_backend("b1")
        lbd = self.simple_lbd([b], workers=1)
        size = 1500000
        s = connect(lbd.listen)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        s.sendall(b"GET /?size=%d HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" % size)
        got = b""
        end = time.time() + 60
        # About 250 KB/s: well past the 5 s linger while bytes are still pending.
        while time.time() < end:
            d = s.recv(16384)
            if not d:
                break
            got += d
            time.sleep(0.06)
        s.close()
        head, _, body = got.partition(b"\r\n\r\n")
        self.assertEqual(parse_status(got), 200)
        self.assertEqual(len(body), size, "response cut short")

    def test_absolute_form_query_routes_like_origin_form(self):
        """"http://h?x" is forwarded as "/?x" and must be routed as "/?x" too,
        or a route on "/?x" could be bypassed."""
        b1, b2 = self.start_backend("b1"), self.start_backend("b2")
        port = free_port()
        listen = "127.0.0.1:%d" % port
        cfg = lbd_config(listen, [{"name": "p1", "servers": [(b1.addr, 1)]},
                                  {"name": "p2", "servers": [(b2.addr, 1)]}],
                         routes=[("*", "/?x", "p2"), ("*", "/", "p1")], workers=1)
        lbd = self.start_lbd(cfg, listen, workers=1)
        for target in (b"/?x", b"http://lbd.test?x"):
            raw = raw_exchange(lbd.listen, b"GET " + target + b" HTTP/1.1\r\nHost: lbd.test\r\n"
                               b"Connection: close\r\n\r\n")
            self.assertEqual(parse_status(raw), 200, raw[:200])
            self.assertIn(b"X-Backend: b2", raw, target)

    def test_pipelined_errors_do_not_grow_without_bound(self):
        b = self.start_backend("b1")
        port = free_port()
        listen = "127.0.0.1:%d" % port
        cfg = lbd_config(listen, [{"name": "web", "servers": [(b.addr, 1)]}],
                         routes=[("only.example", "/", "web")], workers=1)
        lbd = self.start_lbd(cfg, listen, workers=1)
        pid = lbd.worker_pids()[0]
        before = vm_rss_kib(pid)
        s = connect(lbd.listen)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.setblocking(False)
        one = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"      # 404: no route for host a
        blob = one * 2000
        sent = 0
        end = time.time() + 3
        # Never read: lbd must stop taking requests instead of queueing answers.
        while sent < 40 * 1024 * 1024 and time.time() < end:
            try:
                sent += s.send(blob)
            except BlockingIOError:
                time.sleep(0.01)
            except OSError:
                break
        time.sleep(0.3)
        self.assertTrue(lbd.alive())
        self.assertIn(pid, lbd.worker_pids().values(), "the worker died")
        # lbd stops reading once its answers cannot leave: what the client
        # got rid of is what the kernel buffers hold, not the 40 MB offered.
        self.assertLess(sent, 20 * 1024 * 1024, "lbd kept reading: %d bytes taken" % sent)
        if not sanitized(self.lbd_bin):     # ASan's quarantine inflates RSS
            grown = vm_rss_kib(pid) - before
            self.assertLess(grown, 64 * 1024, "worker grew by %d KiB" % grown)
        s.close()
        self.assertEqual(self.get(host="only.example").status, 200)

    def test_client_idle_counts_from_the_response(self):
        b = self.start_backend("b1")
        lbd = self.simple_lbd([b], workers=1, timeouts={"client_idle": "2s"})
        s = connect(lbd.listen)
        s.sendall(b"GET /?delay=1500 HTTP/1.1\r\nHost: a\r\n\r\n")
        s.settimeout(10)
        got = b""
        while b"\r\n\r\n" not in got:
            got += s.recv(65536)
        self.assertEqual(parse_status(got), 200)
        time.sleep(1.0)     # 2.5 s after the request, 1 s after the answer
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        got = s.recv(65536)
        s.close()
        self.assertEqual(parse_status(got), 200, "keep-alive closed early: %r" % got[:80])

    def test_empty_lines_after_a_request_then_silence_get_408(self):
        """A CRLF after a keep-alive request starts the client_header clock.
        The connection used to give its buffers back when the answer left,
        and the 408 then wrote to none: the worker crashed."""
        b = self.start_backend("b1")
        lbd = self.simple_lbd([b], workers=1, timeouts={"client_header": "1s"})
        s = connect(lbd.listen)
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\r\n")
        s.settimeout(15)
        got = recv_until_eof(s)
        s.close()
        rest = got.partition(b"\r\n\r\n")[2]
        self.assertEqual(parse_status(got), 200, got[:200])
        self.assertIn(b"HTTP/1.1 408", rest, "no 408 after the empty line: %r" % got[-200:])
        self.assertEqual(lbd.snapshot()["workers"][0]["pid"], lbd.worker_pids()[0])
        self.assertServes(lbd)

    def test_pooled_connection_gets_a_fresh_response_timeout(self):
        b = self.start_backend("b1")
        self.simple_lbd([b], workers=1,
                        timeouts={"backend_idle": "3s", "backend_response": "3s"})
        self.assertEqual(self.get("/?delay=100").status, 200)
        time.sleep(1.5)     # the pooled connection has been idle 1.5 s
        r = self.get("/?delay=2000")
        self.assertEqual(r.status, 200, "504 means the idle time was counted: %r" % r)

    def test_only_safe_methods_are_retried(self):
        rb = RawBackend()
        self.addCleanup(rb.stop)
        port = free_port()
        listen = "127.0.0.1:%d" % port
        cfg = lbd_config(listen, [{"name": "web", "servers": [(rb.addr, 1)]}], workers=1)
        self.start_lbd(cfg, listen, workers=1)
        self.assertEqual(self.get("/warm").status, 200)
        # GET on the now-stale pooled connection: retried on a new one.
        r = self.get("/again")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(rb.seen.count("GET /again HTTP/1.1"), 2)
        # POST on the stale connection: not sent twice, the client gets 502.
        r = self.get("/post", method="POST", body=b"")
        self.assertEqual(r.status, 502, r)
        self.assertEqual(rb.seen.count("POST /post HTTP/1.1"), 1, rb.seen)


def final_status(sock, deadline):
    """Read responses from SOCK until a final (non-1xx) head; its status.
    Fails at DEADLINE (time.monotonic()): a backend can make the interim
    heads flow without end, so the socket's own timeout never fires."""
    buf = b""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            status = parse_status(buf)
            if status is None:
                raise AssertionError("not a response head: %r" % buf[:100])
            if status >= 200:
                return status
            buf = buf[end + 4:]
            continue
        if time.monotonic() > deadline:
            raise AssertionError("no final response head in time (%d bytes pending)" % len(buf))
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            d = sock.recv(65536)
        except socket.timeout:
            continue
        if not d:
            raise AssertionError("connection closed before a final response")
        buf += d


class ResponseHeadTest(LbdTestCase):
    """backend_response is a bound on the response head as a whole, and a
    client that leaves while it waits for one is let go."""

    def _lbd(self, backend_response="1s", **kw):
        self.b = self.start_backend("b1")
        self.access = self.path("access.log")
        return self.simple_lbd([self.b], workers=1,
                               timeouts={"backend_response": backend_response},
                               extra='access_log = "%s";' % self.access, **kw)

    def _server(self, lbd):
        (srv,) = lbd.snapshot()["pools"][0]["servers"]
        return srv

    def _exchange_over(self, lbd):
        """No request in flight, and the backend has no connection left
        but the one asking for its /stats."""
        wait_for(lambda: self._server(lbd)["active"] == 0, 10, what="the exchange to end")
        wait_for(lambda: self.b.stats()["active"] == 1, 10,
                 what="the backend connection to be closed")

    def _log_statuses(self, n):
        def probe():
            with open(self.access) as f:
                lines = f.read().splitlines()
            return lines if len(lines) >= n else None
        lines = wait_for(probe, 10, what="%d access log lines" % n)
        return [int(re.search(r'" (\d{3}) \d+ "', ln).group(1)) for ln in lines]

    def test_trickled_head_gets_504(self):
        """The status line, then a byte every 100 ms: the head takes 10 s
        and more, each byte used to restart backend_response (1 s)."""
        lbd = self._lbd()
        with HttpConn(lbd.listen, timeout=5) as c:
            c.send(b"GET /?trickle_head=100 HTTP/1.1\r\nHost: a\r\n\r\n")
            self.assertEqual(final_status(c.sock, time.monotonic() + 5), 504)
        self._exchange_over(lbd)
        self.assertEqual(lbd.snapshot()["totals"]["timeouts"]["backend_response"], 1)
        self.assertEqual(self._server(lbd)["failures"], 1)

    def test_endless_early_hints_get_504(self):
        """103 Early Hints without end: relayed, but within backend_response
        of the request, then 504."""
        lbd = self._lbd()
        with HttpConn(lbd.listen, timeout=5) as c:
            c.send(b"GET /?early_hints=forever HTTP/1.1\r\nHost: a\r\n\r\n")
            self.assertEqual(final_status(c.sock, time.monotonic() + 5), 504)
        self._exchange_over(lbd)
        self.assertEqual(lbd.snapshot()["totals"]["timeouts"]["backend_response"], 1)

    def test_early_hints_to_a_client_that_does_not_read_stay_bounded(self):
        """Interim responses a client does not read are held back like a
        body (limits.buffer), not buffered without end."""
        lbd = self._lbd(backend_response="3s")
        pid = lbd.worker_pids()[0]
        before = vm_rss_kib(pid)
        s = socket.socket()
        self.addCleanup(s.close)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        host, port = lbd.listen.rsplit(":", 1)
        s.connect((host, int(port)))
        s.sendall(b"GET /?early_hints=forever HTTP/1.1\r\nHost: a\r\n\r\n")
        time.sleep(1.5)     # a flood of hints, none read
        if not sanitized(self.lbd_bin):     # ASan's quarantine inflates RSS
            grown = vm_rss_kib(pid) - before
            self.assertLess(grown, 32 * 1024, "worker grew by %d KiB" % grown)
        wait_for(lambda: lbd.snapshot()["totals"]["timeouts"]["backend_response"] == 1, 10,
                 what="backend_response to end the hints")
        self._exchange_over(lbd)

    def test_early_hints_held_back_are_all_delivered(self):
        """The interim heads held back for a slow reader go on once it
        reads: every one of them arrives, then the answer."""
        lbd = self._lbd(backend_response="20s")
        n = 100000      # 6.7 MB of hints: more than the kernel buffers hold
        s = socket.socket()
        self.addCleanup(s.close)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        host, port = lbd.listen.rsplit(":", 1)
        s.connect((host, int(port)))
        s.sendall(b"GET /?early_hints=%d HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" % n)
        time.sleep(0.5)     # lbd holds hints back meanwhile
        s.settimeout(20)
        got = recv_until_eof(s)
        self.assertEqual(got.count(b"HTTP/1.1 103 Early Hints\r\n"), n)
        self.assertIn(b"HTTP/1.1 200 OK\r\n", got[-300:])
        self.assertTrue(got.endswith(b"\r\n\r\nb1\n"), got[-100:])

    def _abort_while_waiting(self, reset):
        lbd = self._lbd(backend_response="60s")
        s = connect(lbd.listen)
        s.sendall(b"GET /?hang=1 HTTP/1.1\r\nHost: a\r\n\r\n")
        lbd.wait_in_flight(1)
        if reset:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
        wait_for(lambda: lbd.snapshot()["totals"]["active_connections"] == 0, 10,
                 what="the client connection to be closed")
        self._exchange_over(lbd)
        self.assertEqual(self._log_statuses(1), [499])
        snap = lbd.snapshot()
        self.assertEqual(snap["totals"]["client_aborts"], 1)
        self.assertEqual(snap["totals"]["timeouts"]["backend_response"], 0)
        self.assertEqual(self._server(lbd)["failures"], 0, "not the backend's fault")
        self.assertServes(lbd)

    def test_client_closing_while_waiting_for_the_head_is_let_go(self):
        """close(): a FIN, like a half-close. lbd tells them apart by what
        the client's TCP does with a "100 Continue": a closed socket
        answers with a reset."""
        self._abort_while_waiting(reset=False)

    def test_client_resetting_while_waiting_for_the_head_is_let_go(self):
        self._abort_while_waiting(reset=True)

    def test_half_closed_client_still_gets_a_slow_answer(self):
        """shutdown(SHUT_WR) after the request is no abort: the answer (after
        the 100 Continue that asked) still comes whole."""
        lbd = self._lbd(backend_response="10s")
        s = connect(lbd.listen, timeout=10)
        s.sendall(b"GET /?delay=1500 HTTP/1.1\r\nHost: a\r\n\r\n")
        s.shutdown(socket.SHUT_WR)
        got = recv_until_eof(s)
        s.close()
        self.assertTrue(got.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"),
                        got[:200])
        self.assertTrue(got.endswith(b"\r\n\r\nb1\n"), got[-100:])
        self.assertEqual(self._log_statuses(1), [200])
        self.assertEqual(lbd.snapshot()["totals"]["client_aborts"], 0)
