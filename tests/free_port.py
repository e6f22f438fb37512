"""Prints a TCP port free right now on 127.0.0.1, for tools that cannot bind
port 0 and say which port they got (Prometheus, podman's -p, compose).

Taken below the kernel's ephemeral range: a port from bind(0), once closed,
is soon handed to another test's --port 0 or to a client's outgoing
connection (the load tests open thousands), and the tool then cannot bind it.
"""
import random
import socket

lo = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
for _ in range(1000):
    port = random.randrange(10000, max(lo, 10001))
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    print(port)
    break
else:
    raise SystemExit("free_port: no free port below the ephemeral range")
