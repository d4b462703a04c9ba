# Stand-ins for the images deploy/compose.yaml pulls (dovecot/dovecot, postgres, and
# prom/prometheus), which no registry here can serve: Debian's packages on the base that
# `make base-image` makes, in one image; tests/containers/compose.test.yaml gives each
# service its command. Test-only.
ARG BASE=localhost/cleaninbox-base:bookworm
FROM ${BASE}
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      dovecot-imapd postgresql prometheus >/dev/null \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o 1000 -g 1000 /srv/mail \
 && install -d -o postgres -g postgres /var/lib/postgresql/data \
 && install -d -o prometheus -g prometheus /prometheus
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint
