"""A real Dovecot for the tests: started on 127.0.0.1 with a temporary config.

TLS uses a throwaway self-signed certificate; users live in a passwd-file; mail is stored
in a temporary Maildir. Dovecot's login processes refuse to run as root, so the config
uses its ``dovenull``/``dovecot`` users and a ``first_valid_uid`` at or below the mail
user's uid; every parent directory of its files is made o+x.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.processes import stop_process

PASSWORD = "s3cret-pass"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _open_up(path: Path) -> None:
    """o+x on every parent so Dovecot's unprivileged processes can reach its files."""
    for parent in [path, *path.parents]:
        try:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                parent.chmod(mode | 0o001)
        except PermissionError:
            pass


def make_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            # 10.0.2.2: this host's loopback as a container on slirp4netns reaches it
            # (tests/test_images.py)
            "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:10.0.2.2",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    key.chmod(0o644)
    return cert, key


class Dovecot:
    name = "dovecot"

    @staticmethod
    def native(folder: str) -> str:
        """A folder as the rules name it as this server names it: the same ('/', no
        namespace prefix; tests/cyrus.py's differs)."""
        return folder

    @staticmethod
    def logical(name: str) -> str:
        return name

    def __init__(
        self,
        root: Path,
        *,
        capability_trim: str | None = None,
        extra_config: str = "",
        oauth2_introspection_url: str | None = None,
    ) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        _open_up(self.root)
        self.port = free_port()
        self.tls_port = free_port()
        self.cert, self.key = make_certificate(self.root)
        if os.getuid() == 0:
            entry = pwd.getpwnam("dovecot")
            self.uid, self.gid = entry.pw_uid, entry.pw_gid
        else:
            self.uid, self.gid = os.getuid(), os.getgid()
        self.mail = self.root / "mail"
        self.mail.mkdir(exist_ok=True)
        os.chown(self.mail, self.uid, self.gid) if os.getuid() == 0 else None
        self.users_file = self.root / "users"
        self.users_file.write_text("")
        self.users_file.chmod(0o644)
        self.config = self.root / "dovecot.conf"
        self.log = self.root / "dovecot.log"
        self.capability_trim = capability_trim
        self.extra_config = extra_config
        self.oauth2_introspection_url = oauth2_introspection_url
        self.process: subprocess.Popen[bytes] | None = None

    def add_user(self, name: str, password: str = PASSWORD) -> None:
        home = self.mail / name
        with self.users_file.open("a") as f:
            f.write(f"{name}:{{PLAIN}}{password}:{self.uid}:{self.gid}::{home}\n")

    def write_config(self) -> None:
        r = self.root
        capability = f"imap_capability = {self.capability_trim}\n" if self.capability_trim else ""
        mechanisms = "plain login"
        oauth = ""
        if self.oauth2_introspection_url:
            # Dovecot's oauth2 passdb asks the token service whether a bearer token is
            # active and whose it is (RFC 7662 introspection, POSTed as token=...).
            mechanisms = "plain login xoauth2 oauthbearer"
            ext = r / "oauth2.conf.ext"
            ext.write_text(
                f"introspection_mode = post\n"
                f"introspection_url = {self.oauth2_introspection_url}\n"
                "force_introspection = yes\n"
                "username_attribute = username\n"
                "active_attribute = active\n"
                "active_value = true\n"
            )
            ext.chmod(0o644)
            oauth = f"""passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {ext}
}}
"""
        self.config.write_text(f"""
base_dir = {r}/run
state_dir = {r}/state
log_path = {self.log}
protocols = imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <{self.cert}
ssl_key = <{self.key}
default_login_user = dovenull
default_internal_user = dovecot
first_valid_uid = {min(self.uid, 100)}
mail_location = maildir:~/Maildir
disable_plaintext_auth = no
auth_mechanisms = {mechanisms}
mail_max_userip_connections = 50
{capability}namespace inbox {{
  inbox = yes
  separator = /
}}
{oauth}passdb {{
  driver = passwd-file
  mechanisms = plain login
  args = scheme=PLAIN username_format=%u {self.users_file}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {self.users_file}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.tls_port}
    ssl = yes
  }}
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0666
  }}
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
{self.extra_config}
""")

    def start(self) -> None:
        self.write_config()
        (self.root / "run").mkdir(exist_ok=True)
        (self.root / "state").mkdir(exist_ok=True)
        self.process = subprocess.Popen(
            ["dovecot", "-F", "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group, so kill() takes every child
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                log = self.log.read_text() if self.log.exists() else ""
                raise RuntimeError(f"dovecot exited: {err}\n{log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    if s.recv(100).startswith(b"* OK"):
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("dovecot did not start within 20 s")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=10)
        self.process = None

    def kill(self) -> None:
        """SIGKILL Dovecot and all its processes (a crash, not a shutdown)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until the port is free again
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    time.sleep(0.1)
            except OSError:
                return

    def doveadm(self, *args: str) -> str:
        result = subprocess.run(
            ["doveadm", "-c", str(self.config), *args], capture_output=True, text=True, check=True
        )
        return result.stdout

    @staticmethod
    def available() -> bool:
        return shutil.which("dovecot") is not None


@contextmanager
def running_dovecot(root: Path, users: Iterable[str], **options: Any) -> Iterator[Dovecot]:
    """A started Dovecot under ``root`` serving ``users``, stopped on the way out.

    All users exist before Dovecot starts: its passwd-file reload after a change can lag
    behind a login that follows the change within the same second. ``options`` are
    :class:`Dovecot`'s (capability_trim, extra_config, oauth2_introspection_url).
    """
    server = Dovecot(root, **options)
    for name in users:
        server.add_user(name)
    server.start()
    try:
        yield server
    finally:
        server.stop()
