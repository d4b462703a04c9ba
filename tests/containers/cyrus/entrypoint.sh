#!/bin/sh
# Start Cyrus in the foreground with the users named on the command line, each with the
# password in $CYRUS_PASSWORD (sasldb, realm "cyrus" = imapd.conf's servername).
set -eu
install -d -o cyrus -g mail /run/cyrus /run/cyrus/proc /run/cyrus/lock /run/cyrus/socket
# tests/cyrus.py mounts these on tmpfs (podman copies the image's files up): owned as
# the package made them.
chown cyrus:mail /var/lib/cyrus /var/spool/cyrus
chmod 0750 /var/lib/cyrus
for user in "$@"; do
  printf '%s' "$CYRUS_PASSWORD" | saslpasswd2 -p -c -u cyrus "$user"
done
chown cyrus:mail /etc/sasldb2
exec /usr/lib/cyrus/bin/master -D -l 64
