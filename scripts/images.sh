#!/usr/bin/env bash
# Container images of CleanInbox (deploy/docker/): `make image`, `make base-image`.
# The build logs go to stderr; stdout lists what was made, one line per image.
#
#   scripts/images.sh build   the daemon and training images; prints their names and sizes
#   scripts/images.sh base    a Debian bookworm base with python3 made by mmdebstrap, for
#                             machines that cannot pull python:3.11-slim from a registry
#
# Settings (environment; a value outside those listed is refused):
#   IMAGE_ENGINE   docker or podman (default: docker when its daemon answers, else podman)
#   IMAGE_BASE     the base image of both (default python:3.11-slim)
#   IMAGE_TAG      the tag (default: latest)
#   IMAGE_OFFLINE  1: install from requirements/wheelhouse with no package index (`make
#                  wheelhouse` fills it from the locks on this machine); 0 (default): PyPI
#   IMAGES         which images: "daemon train" (default), "daemon" or "train"
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "images: $*" >&2; exit 2; }

engine=${IMAGE_ENGINE:-}
if [ -z "$engine" ]; then
  # Docker only where its daemon answers: a docker CLI without a daemon is common (CI
  # images, remote contexts not set up) and would fail every build.
  if command -v docker >/dev/null 2>&1 && timeout 20 docker info >/dev/null 2>&1; then
    engine=docker
  elif command -v podman >/dev/null 2>&1; then engine=podman
  elif command -v docker >/dev/null 2>&1; then
    fail "docker is installed but its daemon does not answer (docker info), and podman is not installed (make system-deps)"
  else fail "neither docker nor podman is installed (make system-deps installs podman)"
  fi
fi
case "$engine" in
  docker|podman) command -v "$engine" >/dev/null 2>&1 || fail "IMAGE_ENGINE=$engine is not installed" ;;
  *) fail "IMAGE_ENGINE=$engine: use docker or podman" ;;
esac
# podman: Docker's image format (OCI images drop HEALTHCHECK), builds isolated by chroot
# (runc may not raise limits in RUN steps here; chroot works for rootless podman too).
build_flags=()
[ "$engine" = podman ] && build_flags=(--format docker --isolation chroot)

base_image() {
  local name=${IMAGE_BASE:-localhost/cleaninbox-base:bookworm}
  command -v mmdebstrap >/dev/null 2>&1 || fail "mmdebstrap is not installed (make system-deps)"
  scratch=$(mktemp -d)  # global: the EXIT trap runs after this function has returned
  trap 'rm -rf "$scratch"' EXIT
  # Like python:3.11-slim: no manual pages, translations or documentation but the
  # licences.
  mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,passwd,ca-certificates \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    bookworm "$scratch/rootfs.tar"
  "$engine" import "$scratch/rootfs.tar" "$name" >/dev/null
  echo "$name"
}

build_images() {
  local base=${IMAGE_BASE:-python:3.11-slim} tag=${IMAGE_TAG:-latest}
  local args=(--build-arg "BASE=$base")
  case "${IMAGE_OFFLINE:-0}" in
    0) ;;
    1) ls requirements/wheelhouse/*.whl >/dev/null 2>&1 \
         || fail "IMAGE_OFFLINE=1 needs the wheels in requirements/wheelhouse: make wheelhouse"
       args+=(--build-arg "PIP_INSTALL_ARGS=--no-index --find-links requirements/wheelhouse") ;;
    *) fail "IMAGE_OFFLINE=${IMAGE_OFFLINE}: use 0 or 1" ;;
  esac
  local which
  for which in ${IMAGES:-daemon train}; do
    local file name
    case "$which" in
      daemon) file=deploy/docker/Dockerfile; name=cleaninbox ;;
      train) file=deploy/docker/train.Dockerfile; name=cleaninbox-train ;;
      *) fail "IMAGES: unknown image $which (daemon, train)" ;;
    esac
    # The build's own output goes to stderr: stdout is the list of images.
    "$engine" build "${build_flags[@]}" "${args[@]}" -f "$file" -t "$name:$tag" . >&2 \
      || fail "building $name:$tag from $file failed (its output is above)"
    local size
    size=$("$engine" image inspect --format '{{.Size}}' "$name:$tag")
    printf '%s:%s\t%d MB\n' "$name" "$tag" "$((size / 1000000))"
  done
}

case "${1:-build}" in
  build) build_images ;;
  base) base_image ;;
  *) fail "unknown command ${1}: build or base" ;;
esac
