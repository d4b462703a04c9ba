# A second IMAP server for the integration tests (tests/cyrus.py): Debian's Cyrus IMAP
# 3.6 on the base that `make base-image` makes. Debian's cyrus-imapd conflicts with the
# dovecot-imapd the suite runs on the host, so it lives in a container. Its namespace is
# Debian's default, the standard one: '.' as the hierarchy separator and the user's
# folders under "INBOX." (Triage/All is INBOX.Triage.All there). Test-only.
ARG BASE=localhost/cleaninbox-base:bookworm
FROM ${BASE}
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      cyrus-imapd sasl2-bin libsasl2-modules >/dev/null \
 && rm -rf /var/lib/apt/lists/*
COPY cyrus/imapd.conf /etc/imapd.conf
COPY cyrus/cyrus.conf /etc/cyrus.conf
# The same server without MOVE (its COPY fallback): a second imapd service on the same
# mail store whose configuration suppresses the capability.
RUN { cat /etc/imapd.conf; echo 'suppress_capabilities: MOVE'; } > /etc/imapd-nomove.conf
COPY cyrus/entrypoint.sh /usr/local/bin/cyrus-entrypoint
ENTRYPOINT ["cyrus-entrypoint"]
