"""A TLS client relay for the conformance harness: it listens on a plain loopback port and
carries each connection to a TLS server (wsed with --tls-cert-file), so every raw-socket case of
conformance.py runs unchanged over TLS.

One thread per connection pair; the TLS side is an ssl.SSLObject over memory BIOs driven by one
select loop (never two threads on one SSL object). The server's EOF (or close_notify) becomes an
EOF on the plain side, the plain client's EOF a close_notify + half-close on the TLS side, so the
cases' close and EOF checks see what the server did.
"""

import select
import socket
import ssl
import threading


class TlsRelay:
    def __init__(self, target_port, cafile, host="127.0.0.1"):
        self.target = (host, target_port)
        self.ctx = ssl.create_default_context(cafile=cafile)
        self.ctx.check_hostname = False  # the harness's certificate names localhost / 127.0.0.1
        self.ctx.set_alpn_protocols(["http/1.1"])
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.errors = []  # TLS failures seen by the relay (a case then fails on its own)
        self._stop = False
        self._threads = []
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    def stop(self):
        self._stop = True
        try:
            self.listener.close()
        except OSError:
            pass
        for t in self._threads:
            t.join(timeout=5)
        self._acceptor.join(timeout=5)

    def _accept_loop(self):
        self.listener.settimeout(0.2)
        while not self._stop:
            try:
                plain, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._pair, args=(plain,), daemon=True)
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
            t.start()

    def _pair(self, plain):
        try:
            tcp = socket.create_connection(self.target, timeout=5)
        except OSError as e:
            self.errors.append("connect: %s" % e)
            plain.close()
            return
        tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        plain.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self.ctx.wrap_bio(incoming, outgoing, server_side=False)
        tcp.setblocking(False)
        plain.setblocking(False)
        handshaken = False
        pending_plain = bytearray()  # from the client, before the handshake finished
        plain_eof = tls_eof = False
        to_tcp = bytearray()
        to_plain = bytearray()
        notify_sent = plain_shut = tcp_shut = False
        try:
            while not self._stop:
                if not handshaken:
                    try:
                        tls.do_handshake()
                        handshaken = True
                    except ssl.SSLWantReadError:
                        pass
                if handshaken and pending_plain:
                    tls.write(bytes(pending_plain))
                    pending_plain.clear()
                if handshaken and plain_eof and not notify_sent and not pending_plain:
                    notify_sent = True
                    try:
                        tls.unwrap()
                    except (ssl.SSLWantReadError, ssl.SSLError):
                        pass
                to_tcp += outgoing.read()
                if handshaken:
                    while True:
                        try:
                            d = tls.read(1 << 20)
                        except ssl.SSLWantReadError:
                            break
                        except ssl.SSLZeroReturnError:
                            tls_eof = True
                            break
                        if not d:
                            tls_eof = True
                            break
                        to_plain += d
                # Write what we can.
                if to_tcp:
                    try:
                        to_tcp = to_tcp[tcp.send(to_tcp):]
                    except BlockingIOError:
                        pass
                if to_plain:
                    try:
                        to_plain = to_plain[plain.send(to_plain):]
                    except BlockingIOError:
                        pass
                    except OSError:
                        return
                if tls_eof and not to_plain and not plain_shut:
                    plain_shut = True  # the client may still send (its close frame): relayed
                    plain.shutdown(socket.SHUT_WR)
                if notify_sent and not to_tcp and not tcp_shut:
                    tcp_shut = True
                    tcp.shutdown(socket.SHUT_WR)
                if tls_eof and plain_eof and not to_plain:
                    return
                rs = [tcp] if not tls_eof else []
                if not plain_eof:
                    rs.append(plain)
                ws = ([tcp] if to_tcp else []) + ([plain] if to_plain else [])
                if not rs and not ws:
                    return
                r, w, _ = select.select(rs, ws, [], 0.2)
                if tcp in r:
                    try:
                        d = tcp.recv(1 << 20)
                    except BlockingIOError:
                        d = None
                    except OSError:
                        d = b""
                    if d == b"":
                        tls_eof = True
                        incoming.write_eof()
                    elif d:
                        incoming.write(d)
                if plain in r:
                    try:
                        d = plain.recv(1 << 20)
                    except BlockingIOError:
                        d = None
                    except OSError:
                        d = b""
                    if d == b"":
                        plain_eof = True
                    elif d:
                        if handshaken:
                            tls.write(d)
                        else:
                            pending_plain += d
        except ssl.SSLError as e:
            self.errors.append("tls: %s" % e)
        finally:
            for s in (tcp, plain):
                try:
                    s.close()
                except OSError:
                    pass
