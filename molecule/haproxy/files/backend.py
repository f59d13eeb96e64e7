#!/usr/bin/python3
"""A stand-in app server for the haproxy scenario (a real HTTP server, not the app).

Every request is answered 200 with JSON: this host's name, the method, the path and the
headers it received, names in lower case (tests see where HAProxy sent a request and what
it forwarded).
/health answers 503 while /run/molecule-backend-unhealthy exists; /slow?seconds=N answers
after N seconds (a request still in flight during a drain).
Usage: molecule-backend PORT
"""

import json
import os
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

UNHEALTHY = "/run/molecule-backend-unhealthy"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self):
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        status = 503 if url.path == "/health" and os.path.exists(UNHEALTHY) else 200
        if url.path == "/slow":
            time.sleep(float(parse_qs(url.query).get("seconds", ["1"])[0]))
        body = json.dumps(
            {
                "host": socket.gethostname(),
                "method": self.command,
                "path": url.path,
                "headers": {name.lower(): value for name, value in self.headers.items()},
            }
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args):  # quiet: the scenario logs through HAProxy
        pass


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
