#!/usr/bin/env bash
# Makes the base images `make test-deploy` needs from Debian's archive, where no container
# registry is reachable: python:3.11-slim-bookworm (Debian's Python 3.11 in a venv rooted at
# /usr/local, so `python` and `pip` are on PATH as in the official image) and a Prometheus
# from Debian's package. An image that already exists is kept.
set -euo pipefail
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

make_image() {  # NAME, then mmdebstrap and podman-import options
    local name=$1; shift
    if podman image exists "$name"; then return; fi
    local started=$SECONDS
    mmdebstrap --quiet --variant=minbase --skip=cleanup/reproducible "$@" bookworm "$work/rootfs.tar" "$MIRROR"
    podman import --quiet "${IMPORT_CHANGES[@]}" "$work/rootfs.tar" "$name" >/dev/null
    rm -f "$work/rootfs.tar"
    echo "made $name in $((SECONDS - started)) s ($(podman image inspect --format '{{.Size}}' "$name" | numfmt --to=iec))"
}

IMPORT_CHANGES=(--change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' --change 'CMD ["python3"]')
make_image docker.io/library/python:3.11-slim-bookworm \
    --include=python3,python3-venv,python3-dev,ca-certificates \
    --customize-hook='env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot "$1" /usr/bin/python3 -m venv /usr/local' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/root/.cache'

IMPORT_CHANGES=(--change 'USER prometheus' --change 'WORKDIR /prometheus'
    --change 'ENTRYPOINT ["/usr/bin/prometheus"]'
    --change 'CMD ["--config.file=/etc/prometheus/prometheus.yml"]' --change 'EXPOSE 9090')
make_image localhost/prometheus:debian \
    --include=prometheus \
    --customize-hook='mkdir -p "$1"/prometheus && chroot "$1" chown prometheus /prometheus' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/*'
