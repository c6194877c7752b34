#!/usr/bin/env bash
# Prepare podman on a machine without a registry or Docker engine (see docs/deploy.md, run as root):
#  1. runc + cgroupfs + no default ulimits (crun cannot set RLIMIT_NOFILE here; cgroups are hybrid v1);
#  2. a local Debian bookworm base image with Python 3.11 (localhost/debian-python:bookworm) from debootstrap,
#     with the mirror apt already uses. Idempotent: each step runs only when its result is missing.
set -euo pipefail
conf=/etc/containers/containers.conf
if [ ! -f "$conf" ]; then
  mkdir -p /etc/containers
  cat > "$conf" <<'CONF'
[containers]
default_ulimits = []
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
CONF
fi
base=localhost/debian-python:bookworm
if ! podman image exists "$base"; then
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  if [ -z "$mirror" ]; then
    echo "podman-setup: no Debian mirror found in /etc/apt/sources.list.d/debian.sources; set one there" >&2
    exit 2
  fi
  rootfs=$(mktemp -d)
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror" >/dev/null
  # what slim images drop too: apt lists and caches, translations, documentation (176 MB -> ~125 MB)
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
         "$rootfs"/usr/share/locale/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
  tar -C "$rootfs" -c . | podman import - "$base" >/dev/null
  rm -rf "$rootfs"
fi
echo "$base"
