"""The `web` service: calls `api` at $API_URL (resolved from `service://api`) and shows both."""
import json
import os
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz":
            return self.reply(200, {"ok": True})
        try:
            with urllib.request.urlopen(os.environ["API_URL"], timeout=5) as r:
                api = json.load(r)
        except Exception as e:  # an example app: show the failure instead of hiding it
            return self.reply(502, {"error": str(e)})
        self.reply(200, {"web": {"message": os.environ.get("MESSAGE"), "release": os.environ.get("STACKYARD_RELEASE")}, "api": api})

    def reply(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        print("web:", fmt % args, flush=True)


print(f"web listening on {os.environ['PORT']}, api at {os.environ['API_URL']}", flush=True)
ThreadingHTTPServer((os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"])), Handler).serve_forever()
