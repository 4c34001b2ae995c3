"""A test OpenID Connect issuer: a small HTTP server on a loopback port that serves a discovery
document and a JWKS of keys generated in the test (RSA, EC P-256, Ed25519), signs tokens with
them, counts JWKS requests, rotates keys and can be taken down (every request then fails)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

AUDIENCE = "vitalcast-test"
ALGORITHMS = ("RS256", "ES256", "EdDSA")


def _new_key(alg: str) -> tuple[Any, dict[str, Any]]:
    """(private key, public JWK) for ``alg``."""
    if alg == "RS256":
        private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = json.loads(RSAAlgorithm.to_jwk(private.public_key()))
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
        public = json.loads(ECAlgorithm.to_jwk(private.public_key()))
    elif alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
        public = json.loads(OKPAlgorithm.to_jwk(private.public_key()))
    else:
        raise ValueError(alg)
    return private, public


@dataclass
class LocalIssuer:
    url: str = ""
    #: kid → (alg, private key)
    keys: dict[str, tuple[str, Any]] = field(default_factory=dict)
    #: the kids the JWKS publishes now
    published: list[str] = field(default_factory=list)
    public: dict[str, dict[str, Any]] = field(default_factory=dict)
    jwks_fetches: int = 0
    discovery_fetches: int = 0
    down: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add_key(self, alg: str, *, publish: bool = True) -> str:
        kid = f"{alg.lower()}-{uuid.uuid4().hex[:8]}"
        private, public = _new_key(alg)
        self.keys[kid] = (alg, private)
        self.public[kid] = public | {"kid": kid, "use": "sig", "alg": alg}
        if publish:
            self.published.append(kid)
        return kid

    def rotate(self, alg: str) -> str:
        """A new key replaces every published one."""
        kid = self.add_key(alg, publish=False)
        self.published = [kid]
        return kid

    def token(self, kid: str, *, headers: dict[str, Any] | None = None, **claims: Any) -> str:
        """A token signed with ``kid``: ``iss``, ``aud``, ``sub``, ``iat``, ``exp`` (an hour)
        unless ``claims`` override them (None removes one)."""
        alg, private = self.keys[kid]
        now = int(time.time())
        body = {"iss": self.url, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 3600}
        body |= claims
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, private, algorithm=alg, headers={"kid": kid} | (headers or {}))

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            self.jwks_fetches += 1
        return {"keys": [self.public[kid] for kid in self.published]}


@contextlib.contextmanager
def serve_issuer() -> Iterator[LocalIssuer]:
    """A running ``LocalIssuer`` with one key of each algorithm published."""
    issuer = LocalIssuer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if issuer.down:
                self.send_error(503)
                return
            if self.path == "/.well-known/openid-configuration":
                issuer.discovery_fetches += 1
                body = {"issuer": issuer.url, "jwks_uri": f"{issuer.url}/jwks"}
            elif self.path == "/jwks":
                body = issuer.jwks()
            else:
                self.send_error(404)
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    issuer.url = f"http://127.0.0.1:{server.server_address[1]}"
    for alg in ALGORITHMS:
        issuer.add_key(alg)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield issuer
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
