# A service that reports what its `needs:` gave it: the database each URL reaches (through
# psql) and whether a raw TCP connect to PostgreSQL's port is allowed at all.
import http.server
import json
import os
import socket
import subprocess


def query(var):
    url = os.environ.get(var)
    if not url:
        return None
    r = subprocess.run(
        ["psql", url, "-tAc", "select current_database()"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    return r.stdout.strip() if r.returncode == 0 else "error: " + r.stderr.strip()[-200:]


def redis_ping(var):
    url = os.environ.get(var)
    if not url:
        return None
    rest = url.split("://", 1)[1]
    creds, hostpart = rest.rsplit("@", 1)
    user, password = creds.split(":", 1)
    host, port = hostpart.split("/", 1)[0].rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=5)
    try:
        def cmd(*args):
            out = "*%d\r\n" % len(args)
            for a in args:
                out += "$%d\r\n%s\r\n" % (len(a.encode()), a)
            s.sendall(out.encode())
            return s.recv(256).decode().strip()

        auth = cmd("AUTH", user, password)
        return cmd("PING") if auth == "+OK" else "auth failed"
    except OSError as e:
        return "errno %s" % e.errno
    finally:
        s.close()


def connect(port):
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect(("127.0.0.1", port))
        return "connected"
    except OSError as e:
        return "errno %s" % e.errno
    finally:
        s.close()


class Probe(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps(
            {
                "db1": query("DATABASE_URL"),
                "db2": query("DATABASE_URL_2"),
                "pg_port": connect(int(os.environ["T_PG_PORT"])),
                "redis": redis_ping("REDIS_URL"),
                "redis_port": connect(int(os.environ["T_REDIS_PORT"])),
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Probe).serve_forever()
