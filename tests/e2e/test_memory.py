"""Memory after a burst: once a burst of connections is over, a worker
gives the memory it took back to the kernel (free lists and pooled buffers
freed, malloc_trim), instead of keeping its peak for good. Memory per slow
reader: a client that does not read its answer costs the worker about
limits.buffer, not a multiple of it."""
import resource
import select
import socket
import time

from lbdtest import (LbdTestCase, Timeout, free_port, lbd_config, pattern_body, sanitized,
                     split_hostport, vm_rss_kib, wait_for)

BURST = 3000            # connections with a request in flight at once
SLOW = 200              # clients that do not read their answers
SLOW_BODY = 16 << 20    # their answers: more than the sockets' buffers take


class BurstMemoryTest(LbdTestCase):

    def setUp(self):
        super().setUp()
        # The worker holds a client and a backend socket per request, the
        # test backend one, this process one.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        need = 2 * BURST + 1000
        if hard != resource.RLIM_INFINITY and hard < need:
            self.skipTest(f"needs {need} file descriptors, the hard limit is {hard}")
        if soft != resource.RLIM_INFINITY and soft < need:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
            self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))

    def burst(self, n, target, backend=None):
        """N connections at once, each with one request (in flight together:
        TARGET delays its answer; with BACKEND, its delayed requests are
        waited for until all N are, so a slow client side cannot make the
        burst smaller), every answer read. Returns the worker's RSS with
        all of them open; they are closed on return."""
        socks = []
        try:
            for _ in range(n):
                socks.append(socket.create_connection(split_hostport(self.lbd.listen),
                                                      timeout=10))
            req = b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n"
            for s in socks:
                s.sendall(req)
            if backend is not None:
                wait_for(lambda: backend.stats()["delayed"] == n, 120, interval=0.2,
                         what=f"all {n} requests to wait at the backend together")
            ep = select.epoll()
            left = {}
            for s in socks:
                ep.register(s.fileno(), select.EPOLLIN)
                left[s.fileno()] = [s, b""]
            deadline = time.monotonic() + 120
            while left and time.monotonic() < deadline:
                for fd, _ in ep.poll(1):
                    s, got = left[fd]
                    got += s.recv(65536)
                    head, sep, body = got.partition(b"\r\n\r\n")
                    if sep and body.endswith(b"\n"):    # the backend's name, a line
                        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
                        ep.unregister(fd)
                        del left[fd]
                    else:
                        left[fd][1] = got
            ep.close()
            self.assertEqual(len(left), 0, f"{len(left)} answers missing")
            return vm_rss_kib(self.worker)
        finally:
            for s in socks:
                s.close()

    def test_rss_falls_back_after_burst(self):
        """3000 connections, each with a request in flight, then all gone:
        the worker's RSS grows by some 20 MiB, and at least three quarters
        of that growth is given back within seconds (before, all of it
        stayed: 2.2 MiB, 23 MiB at the peak, 23 MiB for good)."""
        (b,) = self.start_backends("b1")
        listen = f"127.0.0.1:{free_port()}"
        self.start_lbd(lbd_config(listen, [{"name": "web", "servers": [(b.addr, 1)]}],
                                  workers=1, timeouts={"backend_response": "60s"}),
                       listen, workers=1)
        self.worker = self.lbd.worker_pids()[0]
        self.assertEqual(self.get("/").status, 200)
        base = vm_rss_kib(self.worker)
        # All BURST requests in flight together, whatever the machine's
        # load: the delay outlasts sending them (seconds at worst) and the
        # burst waits until the backend holds every one.
        peak = self.burst(BURST, b"/?delay=8000", backend=b)
        self.assertGreater(peak - base, 8 * 1024,
                           f"the burst took too little to tell: {base} -> {peak} KiB")
        wait_for(lambda: self.lbd.snapshot()["totals"]["active_connections"] == 0, 120,
                 what="every client connection to be gone")
        self.lbd.wait_log(rf"memory returned after a peak of {BURST} connections \(0 now\)",
                          timeout=120)
        if sanitized(self.lbd_bin):
            return      # ASan's allocator keeps what it likes: the trim ran, that is all
        self.assertEqual(self.get("/").status, 200)
        bound = base + (peak - base) // 4
        rss = []

        def fell():
            rss.append(vm_rss_kib(self.worker))
            return rss[-1] <= bound
        try:
            wait_for(fell, 120, interval=0.2, what="the worker's RSS to fall")
        except Timeout:
            self.fail(f"the worker's RSS stays at {rss[-1]} KiB after the burst (base {base} "
                      f"KiB, peak {peak} KiB): not back to {bound} KiB within 120 s")
        self.assertEqual(self.lbd.worker_pids()[0], self.worker)


class SlowReaderMemoryTest(LbdTestCase):

    def read_answer(self, s, body_len):
        """The whole answer on S: its body, checked against the pattern."""
        got = bytearray()
        while b"\r\n\r\n" not in got:
            chunk = s.recv(65536)
            self.assertTrue(chunk, "closed before the response head")
            got += chunk
        head, _, body = bytes(got).partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
        body = bytearray(body)
        while len(body) < body_len:
            chunk = s.recv(1 << 20)
            self.assertTrue(chunk, f"closed after {len(body)} of {body_len} body bytes")
            body += chunk
        self.assertEqual(len(body), body_len)
        self.assertTrue(body == pattern_body(body_len), "the body is not the one sent")

    def test_slow_readers_cost_about_the_buffer(self):
        """200 clients ask for 16 MiB each and read nothing (limits.buffer
        64k, one worker). Once the transfers stall, the worker's RSS has
        grown by at most limits.buffer + 32 KiB per connection: the bytes
        read from the backend and not yet sent to the client are bounded
        together by limits.buffer (64 KiB), the block the socket was taking
        bytes from keeps its size (at most a quarter of the limit, 16 KiB),
        and the connection's own state takes a few KiB (measured: 82 KiB).
        Before, the backend's input and the client's output each took up to
        the limit, and a move could double the output: 140 to 200 KiB per
        connection. Then the clients read, and get every byte."""
        (b,) = self.start_backends("b1")
        listen = f"127.0.0.1:{free_port()}"
        limit_kib = 64
        self.start_lbd(lbd_config(listen, [{"name": "web", "servers": [(b.addr, 1)]}],
                                  workers=1, extra=f'limits = {{ buffer = "{limit_kib}k"; }};'),
                       listen, workers=1)
        worker = self.lbd.worker_pids()[0]
        self.assertEqual(self.get("/").status, 200)
        base = vm_rss_kib(worker)
        socks = []
        try:
            for _ in range(SLOW):
                s = socket.socket()
                socks.append(s)
                # Before connect(): the window stays small, so the kernel
                # holds little of the answer on our side.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.settimeout(30)
                s.connect(split_hostport(listen))
                s.sendall(b"GET /?size=%d HTTP/1.1\r\nHost: a\r\n\r\n" % SLOW_BODY)
            # Stalled: what lbd has passed on, and its RSS, stop changing.
            seen = {"last": None, "same": 0}

            def stalled():
                snap = self.lbd.snapshot()
                now = (snap["totals"]["bytes_out"], vm_rss_kib(worker))
                seen["same"] = seen["same"] + 1 if now == seen["last"] else 0
                seen["last"] = now
                return seen["same"] >= 3
            wait_for(stalled, 60, interval=0.3, what="the transfers to stall")
            sent, rss = seen["last"]
            snap = self.lbd.snapshot()
            self.assertEqual(snap["totals"]["active_connections"], SLOW)
            # Each answer is under way, well past what lbd may hold of it.
            self.assertGreater(sent, SLOW * 4 * limit_kib * 1024)
            self.assertLess(sent, SLOW * SLOW_BODY)
            per_conn = (rss - base) / SLOW
            if not sanitized(self.lbd_bin):     # ASan's allocator has its own costs
                self.assertLessEqual(
                    per_conn, limit_kib + 32,
                    f"{per_conn:.1f} KiB per slow reader (RSS {base} -> {rss} KiB) with "
                    f"limits.buffer {limit_kib} KiB")
            # Reading resumes as the clients read: two take their answers whole.
            for s in socks[:2]:
                self.read_answer(s, SLOW_BODY)
        finally:
            for s in socks:
                s.close()
        self.assertEqual(self.lbd.worker_pids()[0], worker)
