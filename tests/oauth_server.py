"""A small OAuth2 authorization server on loopback for the tests: it issues, expires and
revokes tokens, and answers Dovecot's introspection requests (RFC 7662), so XOAUTH2 and
OAUTHBEARER logins go through a real Dovecot oauth2 passdb.

Endpoints: GET /authorize (consents at once and redirects with a code, PKCE S256
required), POST /token (authorization_code, refresh_token grants; invalid_grant for a
revoked refresh token), POST /introspect (Dovecot's passdb). Access tokens live
``lifetime`` seconds.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit


@dataclass
class Grant:
    user: str
    revoked: bool = False


@dataclass
class Access:
    user: str
    expires: float
    valid: bool = True


@dataclass
class TokenService:
    lifetime: float = 3600.0
    default_user: str = "user"
    refresh_tokens: dict[str, Grant] = field(default_factory=dict)
    access_tokens: dict[str, Access] = field(default_factory=dict)
    codes: dict[str, tuple[str, str, str]] = field(
        default_factory=dict
    )  # code -> (challenge, redirect, user)
    requests: list[str] = field(default_factory=list)  # "token:refresh_token", "introspect", ...
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def _reply(
                self,
                status: int,
                body: dict[str, object] | None = None,
                location: str | None = None,
            ) -> None:
                data = json.dumps(body or {}).encode()
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path != "/authorize":
                    self._reply(404)
                    return
                q = {k: v[0] for k, v in parse_qs(url.query).items()}
                if q.get("code_challenge_method") != "S256" or "code_challenge" not in q:
                    self._reply(400, {"error": "invalid_request", "error_description": "no PKCE"})
                    return
                code = secrets.token_urlsafe(16)
                with service.lock:
                    service.requests.append("authorize")
                    service.codes[code] = (
                        q["code_challenge"],
                        q["redirect_uri"],
                        service.default_user,
                    )
                target = (
                    q["redirect_uri"] + "?" + urlencode({"code": code, "state": q.get("state", "")})
                )
                self._reply(302, location=target)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                if self.path == "/introspect":
                    self._reply(200, service.introspect(form.get("token", "")))
                elif self.path == "/token":
                    self._reply(*service.token(form))
                else:
                    self._reply(404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- what the endpoints do ----------------------------------------------------------------

    def _issue(self, user: str) -> dict[str, object]:
        access = secrets.token_urlsafe(24)
        self.access_tokens[access] = Access(user, time.time() + self.lifetime)
        return {"access_token": access, "token_type": "Bearer", "expires_in": int(self.lifetime)}

    def token(self, form: dict[str, str]) -> tuple[int, dict[str, object]]:
        grant = form.get("grant_type", "")
        with self.lock:
            self.requests.append(f"token:{grant}")
            if grant == "refresh_token":
                record = self.refresh_tokens.get(form.get("refresh_token", ""))
                if record is None or record.revoked:
                    return 400, {
                        "error": "invalid_grant",
                        "error_description": "Token has been expired or revoked.",
                    }
                return 200, self._issue(record.user)
            if grant == "authorization_code":
                entry = self.codes.pop(form.get("code", ""), None)
                if entry is None:
                    return 400, {"error": "invalid_grant"}
                challenge, redirect, user = entry
                digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
                expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
                if expected != challenge or form.get("redirect_uri") != redirect:
                    return 400, {"error": "invalid_grant", "error_description": "PKCE mismatch"}
                refresh = secrets.token_urlsafe(24)
                self.refresh_tokens[refresh] = Grant(user)
                return 200, {**self._issue(user), "refresh_token": refresh}
            return 400, {"error": "unsupported_grant_type"}

    def introspect(self, token: str) -> dict[str, object]:
        with self.lock:
            self.requests.append("introspect")
            access = self.access_tokens.get(token)
            if access is None or not access.valid or access.expires < time.time():
                return {"active": False}
            return {"active": True, "username": access.user}

    # -- test controls -------------------------------------------------------------------------

    def refresh_token_for(self, user: str) -> str:
        with self.lock:
            refresh = secrets.token_urlsafe(24)
            self.refresh_tokens[refresh] = Grant(user)
            return refresh

    def revoke(self, refresh_token: str) -> None:
        """Revoke a refresh token and every access token issued for its user."""
        with self.lock:
            grant = self.refresh_tokens[refresh_token]
            grant.revoked = True
            for access in self.access_tokens.values():
                if access.user == grant.user:
                    access.valid = False

    def invalidate_access_tokens(self) -> None:
        """Server side only: the client still believes its tokens are good (a 401 next)."""
        with self.lock:
            for access in self.access_tokens.values():
                access.valid = False

    def count(self, request: str) -> int:
        with self.lock:
            return self.requests.count(request)
