#!/usr/bin/env bash
# Docker Engine (Debian's docker.io), a local image registry (docker-registry) and the
# dependency images of the Docker projects. The base image is the official python:3.11-slim
# where Docker Hub answers, else a stand-in built from Debian packages (.ci/base-image.sh).
set -euo pipefail

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

if ! docker info >/dev/null 2>&1; then
  # No bridge or iptables in this sandbox: containers use the host network (-A network=host).
  nohup dockerd --iptables=false --bridge=none >/tmp/dockerd.log 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null || { echo "ci: dockerd did not start: $(tail -5 /tmp/dockerd.log)" >&2; exit 1; }
fi

base=python:3.11-slim
if ! docker image inspect "$base" >/dev/null 2>&1 && ! timeout 120 docker pull -q "$base" >/dev/null 2>&1; then
  base=mlflow-store/python:3.11-bookworm
  .ci/base-image.sh "$base"
fi
make --no-print-directory docker-images BASE_IMAGE="$base"
