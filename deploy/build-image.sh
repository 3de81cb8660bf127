#!/usr/bin/env bash
# Build the DaemonSet's image (deploy/Dockerfile) from this checkout with Debian's podman + runc, without
# a container registry: the base image (debian:bookworm-slim) is made locally with debootstrap.
#
#   bash deploy/build-image.sh [TAG]          default TAG: nftproxy:dev
#
# As root on Debian. It installs podman, runc and debootstrap when missing, and never touches the host's
# network: podman's default bridge network is never created (netavark would write iptables rules and
# ip_forward=1 into the host's namespace), `podman build` runs with --network=host only so apt can reach
# the archive, and every container this project runs names its network (a test namespace, or none).
#
# Offline-capable: Python dependencies are downloaded on the host, with the host's own pip settings (index,
# mirror, CA bundle), into deploy/wheels/, and the image installs them from there with --no-index; the
# base image and the layers stay in podman's store. A rebuild needs no network unless the Debian package
# list of the Dockerfile or pyproject.toml's dependencies changed.
#
# Settings (environment): NFTPROXY_IMAGE_STATE (default /var/tmp/nftproxy-image: containers.conf and the
# debootstrap scratch dir), DEBIAN_MIRROR (default: the first deb URI of /etc/apt/sources*),
# NFTPROXY_BASE_IMAGE (default debian:bookworm-slim; made here unless it exists).
set -euo pipefail
cd "$(dirname "$0")/.."

tag="${1:-nftproxy:dev}"
state="${NFTPROXY_IMAGE_STATE:-/var/tmp/nftproxy-image}"
base="${NFTPROXY_BASE_IMAGE:-debian:bookworm-slim}"
started=$(date +%s)

say() { echo "build-image: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
    say "run as root (podman stores images as root; debootstrap needs it)"
    exit 2
fi

missing=()
for pkg in podman runc debootstrap; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# podman's settings for this kernel, in a file of our own (nothing in /etc): runc (crun refuses the
# hybrid cgroup layout), explicit rlimits (root lacks CAP_SYS_RESOURCE here, podman's defaults fail),
# and no network unless a command names one.
mkdir -p "$state"
nofile=$(ulimit -Hn)
[ "$nofile" = unlimited ] && nofile=1048576
cat >"$state/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=32768:32768"]
netns = "none"

[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF="$state/containers.conf"

if ! podman image exists "$base"; then
    # the archive apt uses here (a mirror or proxy the machine is set up with), else Debian's own
    mirror="${DEBIAN_MIRROR:-$( { cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        /etc/apt/sources.list.d/*.sources 2>/dev/null || true; } | grep -E '^(URIs:|deb )' \
        | grep -oE 'https?://[^ ]+/debian/?( |$)' | head -n1 | tr -d ' ')}"
    mirror="${mirror:-http://deb.debian.org/debian}"
    rootfs="$state/rootfs"
    rm -rf "$rootfs"
    say "making $base with debootstrap from $mirror"
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$state/debootstrap.log" 2>&1 \
        || { tail -n 20 "$state/debootstrap.log" >&2; exit 1; }
    # what Debian's own slim image holds: no apt lists or caches (every later layer would carry them), no
    # docs, man pages or translations, and dpkg told to keep it so
    chroot "$rootfs" apt-get clean
    printf '%s\n' 'path-exclude=/usr/share/doc/*' 'path-include=/usr/share/doc/*/copyright' \
        'path-exclude=/usr/share/man/*' 'path-exclude=/usr/share/info/*' 'path-exclude=/usr/share/locale/*' \
        'path-exclude=/usr/share/lintian/*' >"$rootfs/etc/dpkg/dpkg.cfg.d/slim"
    find "$rootfs/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/usr/share/man/* \
        "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* "$rootfs"/usr/share/lintian/* "$rootfs"/var/log/*.log
    tar -C "$rootfs" -c . | podman import --quiet - "$base" >/dev/null
    rm -rf "$rootfs"
fi

# Python dependencies (and the wheel builder) as wheels, fetched on the host with its pip settings; pip
# skips the download of what deploy/wheels/ already holds.
python3 - >"$state/requirements.txt" <<'EOF'
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))
print("\n".join([*project["project"]["dependencies"], *project["build-system"]["requires"]]))
EOF
mkdir -p deploy/wheels
pip=(.venv/bin/python -m pip)
if [ ! -x .venv/bin/python ]; then  # a clean checkout: a throwaway venv just for pip download
    python3 -c 'import venv, ensurepip' 2>/dev/null \
        || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    [ -x "$state/pip-venv/bin/python" ] || python3 -m venv "$state/pip-venv"
    pip=("$state/pip-venv/bin/python" -m pip)
fi
"${pip[@]}" download --only-binary=:all: -d deploy/wheels -r "$state/requirements.txt" >"$state/pip.log" 2>&1 \
    || { tail -n 20 "$state/pip.log" >&2; exit 1; }

say "building $tag"
podman build --network=host --layers -f deploy/Dockerfile --ignorefile deploy/Dockerfile.dockerignore -t "$tag" \
    --build-arg PIP_OFFLINE=1 . >"$state/build.log" 2>&1 || { tail -n 30 "$state/build.log" >&2; exit 1; }

size=$(podman image inspect --format '{{.Size}}' "$tag")
say "built $tag: $((size / 1000000)) MB, in $(( $(date +%s) - started )) s (log: $state/build.log)"
