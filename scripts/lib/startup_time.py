"""Milliseconds from exec to the first /readyz 200: startup_time.py BIN PORT (run in an empty dir)."""

import os
import socket
import subprocess
import sys
import time

binary, port = sys.argv[1], int(sys.argv[2])
env = {"PATH": os.environ.get("PATH", ""), "PORT": str(port), "LOG_FORMAT": "json", "METRICS_ADDR": "off"}
started = time.monotonic()
proc = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    while time.monotonic() - started < 30:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    print(round((time.monotonic() - started) * 1000, 1))
                    break
        except OSError:
            pass
        time.sleep(0.002)
finally:
    proc.terminate()
    proc.wait(10)
