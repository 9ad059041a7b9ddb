"""A UDP or TCP contact for lab tests, run inside VM namespaces (tests/e2e/test_one_way_e2e.py).

    python tests/e2e/contact.py serve udp|tcp IP PORT  # prints "listening", then "from SRC"
                                                      # for each datagram or connection, echoing
    python tests/e2e/contact.py ask udp|tcp IP PORT    # exit 0 when the server answered within
                                                      # 3 s, 1 when it did not

A server that printed no "from" line was never reached: a refused contact is told apart from a
lost answer.
"""

from __future__ import annotations

import socket
import sys

ANSWER_WAIT_S = 3.0


def serve(proto: str, ip: str, port: int) -> None:
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((ip, port))
        if proto == "tcp":
            srv.listen(8)
        print("listening", flush=True)
        while True:
            if proto == "udp":
                data, peer = srv.recvfrom(2048)
                print(f"from {peer[0]}", flush=True)
                srv.sendto(data, peer)
                continue
            conn, peer = srv.accept()
            print(f"from {peer[0]}", flush=True)
            with conn:
                conn.sendall(conn.recv(2048))


def ask(proto: str, ip: str, port: int) -> bool:
    try:
        if proto == "udp":
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(ANSWER_WAIT_S)
                s.sendto(b"hello", (ip, port))
                return s.recvfrom(2048)[0] == b"hello"
        with socket.create_connection((ip, port), timeout=ANSWER_WAIT_S) as s:
            s.sendall(b"hello")
            return s.recv(2048) == b"hello"
    except OSError:
        return False


if __name__ == "__main__":
    command, protocol, address, number = sys.argv[1:5]
    if command == "serve":
        serve(protocol, address, int(number))
    else:
        sys.exit(0 if ask(protocol, address, int(number)) else 1)
