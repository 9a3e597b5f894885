#!/usr/bin/env python3
"""Smart-HTTP git server for loopback tests: runs `git http-backend` as CGI (stdlib only).
Ported from shared/reference/scripts/git-http-server.py; adds port 0 and a readiness line.

Usage: git-http-server.py <project-root> [port=0] [--auth user:pass]
Listens on 127.0.0.1 only. With port 0 it picks a free port; either way it prints
"listening <port>" on stdout once it accepts connections.
Clone: git clone http://127.0.0.1:<port>/<repo>.git. With --auth every request needs those Basic
credentials (401 otherwise). Supports protocol v2 (Git-Protocol header), chunked request bodies
and gzip'd bodies (passed through to http-backend). Set GIT_HTTP_VERBOSE=1 to log requests, and
GIT_HTTP_LOG=<file> to append each request's path and Authorization header presence to a file."""
import base64, http.server, os, subprocess, sys, urllib.parse

ROOT = os.path.abspath(sys.argv[1])
PORT = int(sys.argv[2]) if len(sys.argv) > 2 and not sys.argv[2].startswith("--") else 0
AUTH = sys.argv[sys.argv.index("--auth") + 1] if "--auth" in sys.argv else None
GIT = os.environ.get("GIT", "git")
LOG = os.environ.get("GIT_HTTP_LOG")


class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *a):
        if os.environ.get("GIT_HTTP_VERBOSE"):
            sys.stderr.write(fmt % a + "\n")

    def _body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _handle(self):
        u = urllib.parse.urlsplit(self.path)
        ah = self.headers.get("Authorization", "")
        if LOG:
            with open(LOG, "a") as f:
                f.write("%s %s auth=%s\n" % (self.command, u.path, "yes" if ah else "no"))
        user = ""
        if AUTH:
            ok = ah.startswith("Basic ") and base64.b64decode(ah[6:]).decode(errors="replace") == AUTH
            if not ok:
                self._body()
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            user = AUTH.split(":")[0]
        body = self._body()
        env = dict(os.environ, GIT_PROJECT_ROOT=ROOT, GIT_HTTP_EXPORT_ALL="1",
                   REQUEST_METHOD=self.command, PATH_INFO=urllib.parse.unquote(u.path),
                   QUERY_STRING=u.query, CONTENT_TYPE=self.headers.get("Content-Type", ""),
                   CONTENT_LENGTH=str(len(body)), REMOTE_ADDR=self.client_address[0],
                   REMOTE_USER=user or ("anonymous" if not AUTH else ""),
                   GATEWAY_INTERFACE="CGI/1.1", SERVER_PROTOCOL="HTTP/1.1")
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        p = subprocess.run([GIT, "http-backend"], input=body, capture_output=True, env=env)
        out = p.stdout
        sep = out.find(b"\r\n\r\n")
        sl = 4
        if sep < 0 or (out.find(b"\n\n") >= 0 and out.find(b"\n\n") < sep):
            sep = out.find(b"\n\n")
            sl = 2
        head, payload = (out[:sep], out[sep + sl:]) if sep >= 0 else (b"", out)
        status, hdrs = 200, []
        for line in head.decode("latin-1").splitlines():
            k, _, v = line.partition(":")
            v = v.strip()
            if k.lower() == "status":
                status = int(v.split()[0])
            elif k:
                hdrs.append((k, v))
        self.send_response(status)
        for k, v in hdrs:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_HEAD = _handle


server = http.server.ThreadingHTTPServer(("127.0.0.1", PORT), H)
print("listening %d" % server.server_address[1], flush=True)
server.serve_forever()
