"""The `api` service: answers JSON with the env vars it was given (selected, never secrets)."""
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SHOWN = ("GREETING", "STACKYARD_SERVICE", "STACKYARD_RELEASE", "MESSAGE")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({k: os.environ.get(k) for k in SHOWN}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        print("api:", fmt % args, flush=True)


print(f"api listening on {os.environ['PORT']}", flush=True)
ThreadingHTTPServer((os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"])), Handler).serve_forever()
