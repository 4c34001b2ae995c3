"""Local bearer tokens: JWTs signed HS256 with the deployment's secret (``sub`` = user id),
issued by ``vitalcast token create`` and verified by the ``Authenticator`` (``auth.py``).

Apart from ``auth.py`` so that issuing a token imports PyJWT and nothing of the server (OpenID
Connect keys, the revocation bus, Redis): ``token create`` stays quick (``tests/test_startup.py``).
"""

from __future__ import annotations

import jwt

ALGORITHM = "HS256"


def issue_token(secret: str, user_id: str, *, now_s: int, ttl_s: int, now_ms: int = 0) -> str:
    """A signed local token for ``user_id`` valid for ``ttl_s`` seconds from ``now_s``.
    ``iat_ms`` (``now_ms``, or ``now_s`` in ms) tells a revocation in the same second apart."""
    issued_ms = now_ms or now_s * 1000
    return jwt.encode(
        {"sub": user_id, "iat": now_s, "iat_ms": issued_ms, "exp": now_s + ttl_s},
        secret,
        ALGORITHM,
    )
