#!/usr/bin/env python3
"""Verify a Tollgate access token in your own service with PyJWT, through Tollgate's JWKS.

Usage:  verify_token.py JWKS_URL ISSUER AUDIENCE  < token
Prints the verified claims as JSON and exits 0; prints the reason to stderr and exits 1 when the
token is not acceptable. The token is read from stdin, not argv, so it never shows in `ps`.

What it checks (RFC 9068 §4, RFC 8725): the signature with the key named by `kid` from the JWKS,
with ES256 pinned (never the token's own `alg` choice); `iss` exactly; `aud` contains AUDIENCE;
`exp`, `iat`, `nbf` with a small leeway; the required claims present; and the header `typ` at+jwt,
so that another kind of JWT signed by the same keys cannot pass as an access token.

Needs PyJWT >= 2.4 with cryptography (Debian: python3-jwt python3-cryptography).
"""
import json
import sys

import jwt  # PyJWT

ALGORITHMS = ["ES256"]  # pin what Tollgate signs with (keys.algorithm)
REQUIRED = ["iss", "sub", "aud", "exp", "iat", "jti", "client_id"]
ACCESS_TOKEN_TYPES = {"at+jwt", "application/at+jwt"}


def verify(token: str, jwks_url: str, issuer: str, audience: str) -> dict:
    # PyJWKClient caches the key set and refetches when it meets an unknown kid (a rotation).
    jwks = jwt.PyJWKClient(jwks_url, cache_keys=True)
    signing_key = jwks.get_signing_key_from_jwt(token)
    claims = jwt.decode(
        token,
        signing_key.key,
        algorithms=ALGORITHMS,
        audience=audience,
        issuer=issuer,
        leeway=30,
        options={"require": REQUIRED},
    )
    # PyJWT does not look at typ: check it (the signature is verified, so the header is authentic).
    typ = jwt.get_unverified_header(token).get("typ", "")
    if typ.lower() not in ACCESS_TOKEN_TYPES:
        raise jwt.InvalidTokenError(f"typ {typ!r} is not at+jwt")
    return claims


def main(argv: list) -> int:
    if len(argv) != 4:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    token = sys.stdin.read().strip()
    try:
        claims = verify(token, argv[1], argv[2], argv[3])
    except jwt.PyJWKClientError as err:
        print(f"rejected: key lookup failed: {err}", file=sys.stderr)
        return 1
    except jwt.InvalidTokenError as err:
        print(f"rejected: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    json.dump(claims, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
