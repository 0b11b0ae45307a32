#!/usr/bin/env bash
# Build the molecule test-host image localhost/brokerfleet-test-host:bookworm, once.
# No image registry is reachable: debootstrap a minbase Debian 12 from the Debian mirror,
# `podman import` it, then `podman build` the Containerfile next to this script on top.
# Idempotent: does nothing when the image exists. Set REBUILD=1 to rebuild it (the imported
# rootfs is kept and reused unless REBUILD_ROOTFS=1 too).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export CONTAINERS_CONF="$(cd "${here}/.." && pwd)/containers.conf"

IMAGE="${IMAGE:-localhost/brokerfleet-test-host:bookworm}"
ROOTFS_IMAGE="${ROOTFS_IMAGE:-localhost/brokerfleet-test-host-rootfs:bookworm}"
SUITE="${SUITE:-bookworm}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
REBUILD="${REBUILD:-0}"
REBUILD_ROOTFS="${REBUILD_ROOTFS:-0}"

log() { printf '[build.sh %s] %s\n' "$(date +%T)" "$*" >&2; }

for tool in podman debootstrap; do
    command -v "${tool}" >/dev/null || { log "missing ${tool}: apt-get install -y podman runc debootstrap"; exit 1; }
done

if [[ "${REBUILD}" != 1 ]] && podman image exists "${IMAGE}"; then
    log "${IMAGE} exists, nothing to do (REBUILD=1 to rebuild)"
    exit 0
fi

start=${SECONDS}

if [[ "${REBUILD_ROOTFS}" == 1 ]] || ! podman image exists "${ROOTFS_IMAGE}"; then
    rootfs="$(mktemp -d /var/tmp/brokerfleet-rootfs.XXXXXX)"
    trap 'rm -rf "${rootfs}"' EXIT
    log "debootstrap --variant=minbase ${SUITE} from ${MIRROR}"
    debootstrap --variant=minbase "${SUITE}" "${rootfs}" "${MIRROR}" >&2
    rm -rf "${rootfs}"/var/cache/apt/archives/*.deb "${rootfs}"/var/lib/apt/lists/*
    log "podman import -> ${ROOTFS_IMAGE}"
    tar -C "${rootfs}" --numeric-owner -c . | podman import - "${ROOTFS_IMAGE}" >/dev/null
    rm -rf "${rootfs}"
    trap - EXIT
fi

old_id="$(podman image inspect --format '{{.Id}}' "${IMAGE}" 2>/dev/null || true)"
log "podman build -> ${IMAGE}"
podman build --pull=never --build-arg "BASE_IMAGE=${ROOTFS_IMAGE}" \
    -t "${IMAGE}" -f "${here}/Containerfile" "${here}" >&2
new_id="$(podman image inspect --format '{{.Id}}' "${IMAGE}")"
if [[ -n "${old_id}" && "${old_id}" != "${new_id}" ]]; then
    podman rmi "${old_id}" >/dev/null 2>&1 || log "previous image ${old_id:0:12} still in use, kept"
fi

log "built ${IMAGE} in $((SECONDS - start)) s"
