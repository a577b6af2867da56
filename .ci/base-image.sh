#!/usr/bin/env bash
# Build a stand-in for the official python:3.11-slim image from Debian bookworm packages,
# for machines that cannot reach Docker Hub. The project Dockerfiles take it through
# `--build-arg BASE_IMAGE=...` (make docker-images BASE_IMAGE=...). It carries this host's
# CA bundle so that pip inside `docker build` trusts the same TLS proxy as the host.
# Usage: .ci/base-image.sh [TAG]
set -euo pipefail
tag=${1:-mlflow-store/python:3.11-bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "base image $tag already exists"
  exit 0
fi
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase \
  --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
  bookworm "$rootfs" "$mirror" >/dev/null
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | docker import \
  --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
  --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  - "$tag" >/dev/null
echo "built base image $tag"
