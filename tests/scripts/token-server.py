#!/usr/bin/env python3
"""Minimal Docker registry v2 token server (bearer-token auth) for loopback tests.
Ported from shared/reference/scripts/token-server.py.

Usage: token-server.py <token.key> <token.crt> [port=0] [issuer=test-issuer]
Listens on 127.0.0.1 only. With port 0 it picks a free port; either way it prints
"listening <port>" on stdout once it accepts connections.
Issues RS256 JWTs with an x5c header (cert = the registry's auth.token.rootcertbundle),
granting every requested scope to testuser:testpass; anonymous clients get pull only, and
wrong credentials get 401. Only the stdlib + the openssl CLI (for signing)."""
import base64, http.server, json, os, subprocess, sys, time, urllib.parse

KEY, CRT = sys.argv[1], sys.argv[2]
PORT = int(sys.argv[3]) if len(sys.argv) > 3 else 0
ISSUER = sys.argv[4] if len(sys.argv) > 4 else "test-issuer"
USER, PASSWORD = "testuser", "testpass"
der = subprocess.run(["openssl", "x509", "-in", CRT, "-outform", "DER"], check=True, capture_output=True).stdout
X5C = base64.b64encode(der).decode()
b64u = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def sign(payload):
    hdr = {"typ": "JWT", "alg": "RS256", "x5c": [X5C]}
    signing_input = (b64u(json.dumps(hdr).encode()) + "." + b64u(json.dumps(payload).encode())).encode()
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", KEY], input=signing_input,
                         check=True, capture_output=True).stdout
    return signing_input.decode() + "." + b64u(sig)


class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def deny(self):
        self.send_response(401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        u = urllib.parse.urlparse(self.path)
        q = urllib.parse.parse_qs(u.query)
        user = None
        ah = self.headers.get("Authorization", "")
        if ah.startswith("Basic "):
            try:
                user, _, pw = base64.b64decode(ah[6:]).decode().partition(":")
            except Exception:
                return self.deny()
            if (user, pw) != (USER, PASSWORD):
                return self.deny()
        access = []
        for sc in q.get("scope", []):
            for one in sc.split(" "):
                typ, _, rest = one.partition(":")
                name, _, actions = rest.rpartition(":")
                acts = [a for a in actions.split(",") if a]
                if user is None:
                    acts = [a for a in acts if a == "pull"]
                access.append({"type": typ, "name": name, "actions": acts})
        now = int(time.time())
        tok = sign({"iss": ISSUER, "sub": user or "", "aud": q.get("service", [""])[0],
                    "exp": now + 300, "nbf": now - 10, "iat": now, "jti": os.urandom(8).hex(),
                    "access": access})
        body = json.dumps({"token": tok, "access_token": tok, "expires_in": 300}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


server = http.server.ThreadingHTTPServer(("127.0.0.1", PORT), H)
print(f"listening {server.server_address[1]}", flush=True)
server.serve_forever()
