"""A TCP byte counter for lab tests, run inside VM namespaces by ``Lab.tcp_transfer``.

    python tests/integration/tcp_bytes.py sink IP PORT    # prints "listening", then the bytes
                                                         # received once the sender closes
    python tests/integration/tcp_bytes.py send IP PORT N  # sends N bytes, then closes

Unlike iperf3's receiver figure (which stops counting when the test-end message arrives), the
sink's count is every byte that crossed, so a test can require all of them.
"""

from __future__ import annotations

import socket
import sys

CHUNK = 1 << 16


def sink(ip: str, port: int) -> None:
    with socket.socket() as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((ip, port))
        srv.listen(1)
        print("listening", flush=True)
        conn, _ = srv.accept()
        conn.settimeout(60)
        total = 0
        with conn:
            while data := conn.recv(CHUNK):
                total += len(data)
        print(total, flush=True)


def send(ip: str, port: int, nbytes: int) -> None:
    with socket.create_connection((ip, port), timeout=60) as conn:
        block = b"x" * CHUNK
        left = nbytes
        while left > 0:
            conn.sendall(block[: min(left, CHUNK)])
            left -= CHUNK
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)  # the sink closes once it has counted everything


if __name__ == "__main__":
    if sys.argv[1] == "sink":
        sink(sys.argv[2], int(sys.argv[3]))
    else:
        send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
