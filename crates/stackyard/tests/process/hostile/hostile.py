"""A hostile service: tries everything isolation.md denies, records each outcome, then serves
the record as JSON on $PORT so the test reads it from the service's own output.

Each attempt is reported as "allowed" or "denied: <error>"; the test decides which is right.
Targets come from the environment (an attacker could guess them)."""

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import time

results = {}


def attempt(name, fn):
    try:
        fn()
        results[name] = "allowed"
    except Exception as e:  # noqa: BLE001 - every failure is an outcome
        results[name] = "denied: %s: %s" % (type(e).__name__, e)


def read(path):
    with open(path, "rb") as f:
        f.read(1)


def listdir(path):
    os.listdir(path)


def write(path):
    with open(path, "w") as f:
        f.write("pwned")


def connect(port):
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect(("127.0.0.1", port))
    except ConnectionRefusedError:
        # Nothing listens there, but the sandbox let the connect through.
        pass
    finally:
        s.close()


def listen(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        s.listen(1)
    finally:
        s.close()


def fork_bomb():
    """Forks sleepers until the kernel says no; reports how many it got."""
    children = []
    try:
        while len(children) < 5000:
            pid = os.fork()
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            children.append(pid)
        raise RuntimeError("5000 forks and no limit")
    finally:
        for pid in children:
            os.kill(pid, signal.SIGKILL)
        for pid in children:
            os.waitpid(pid, 0)
        results["forks_before_limit"] = len(children)


def memory_hog():
    code = "b = bytearray(%d)\nfor i in range(0, len(b), 4096): b[i] = 1\n" % (1 << 30)
    rc = subprocess.run([sys.executable, "-c", code]).returncode
    results["memory_hog_returncode"] = rc
    if rc != -signal.SIGKILL:
        raise RuntimeError("the hog ended with %s" % rc)
    raise MemoryError("the hog was killed")


env = os.environ
data = env["T_DATA_DIR"]
attempt("read_admin_token", lambda: read(os.path.join(data, "admin-token")))
attempt("read_database", lambda: read(os.path.join(data, "stackyard.db")))
attempt("list_artifacts", lambda: listdir(os.path.join(data, "artifacts")))
attempt("list_data_dir", lambda: listdir(data))
attempt("read_victim_release", lambda: listdir(env["T_VICTIM_DIR"]))
attempt("read_server_environ", lambda: read("/proc/%s/environ" % env["T_SERVER_PID"]))
attempt("write_data_dir", lambda: write(os.path.join(data, "pwned")))
attempt("write_tmp", lambda: write("/tmp/stackyard-hostile-%d" % os.getpid()))
attempt("write_own_dir", lambda: write("own-file"))
attempt("write_own_tmpdir", lambda: write(os.path.join(env["TMPDIR"], "scratch")))
attempt("connect_api", lambda: connect(int(env["T_API_PORT"])))
attempt("connect_postgres", lambda: connect(5432))
attempt("connect_redis", lambda: connect(6379))
attempt("connect_victim", lambda: connect(int(env["T_VICTIM_PORT"])))
attempt("connect_sibling", lambda: connect(int(env["SIBLING"].rsplit(":", 1)[1])))
attempt("connect_egress_443", lambda: connect(443))
attempt("listen_other_port", lambda: listen(int(env["PORT"]) + 1 if int(env["PORT"]) < 65535 else 1024))
attempt("kill_victim", lambda: os.kill(int(env["T_VICTIM_PID"]), signal.SIGKILL))
# Signal 0 asks the kernel for permission without sending anything.
attempt("kill_server", lambda: os.kill(int(env["T_SERVER_PID"]), 0))
attempt("fork_bomb", fork_bomb)
attempt("memory_hog", memory_hog)
results["uid"] = os.getuid()
print(json.dumps(results, sort_keys=True), flush=True)

body = json.dumps(results).encode()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.HTTPServer(("127.0.0.1", int(env["PORT"])), Handler).serve_forever()
