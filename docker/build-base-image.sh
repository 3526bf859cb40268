#!/usr/bin/env bash
# Builds titra-base:bookworm, a stand-in for python:3.11-slim made offline from Debian packages, for
# machines with no container registry: debootstrap a minimal bookworm with Python 3.11 and the chaos
# tools into a folder, then `docker import` it. Does nothing if the image already exists.
#   env TITRA_BASE_IMAGE (default titra-base:bookworm), TITRA_DEBIAN_MIRROR (default: the one apt uses)
set -euo pipefail

image=${TITRA_BASE_IMAGE:-titra-base:bookworm}
suite=bookworm
packages=python3,python3-venv,iptables,iproute2,procps,ca-certificates

if docker image inspect "$image" >/dev/null 2>&1; then
    echo "build-base-image: $image exists"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "build-base-image: debootstrap needs root; run as root (or sudo)" >&2
    exit 2
fi
if ! command -v debootstrap >/dev/null; then
    apt-get update -q && apt-get install -y -q debootstrap
fi

# The Debian mirror this host's apt uses for $suite (deb822 *.sources or one-line *.list).
apt_mirror() {
    local files=() f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && files+=("$f")
    done
    [ ${#files[@]} -gt 0 ] || return 0
    {
        # deb822: one stanza per paragraph; take the first enabled `deb` stanza whose Suites has $suite.
        for f in "${files[@]}"; do
            case "$f" in *.sources) awk -v suite="$suite" '
                BEGIN { RS = ""; FS = "\n" }
                {
                    uris = ""; suites = ""; types = ""; enabled = "yes"
                    for (i = 1; i <= NF; i++) {
                        line = $i
                        if (sub(/^URIs:[ \t]*/, "", line)) uris = line
                        else if (sub(/^Suites:[ \t]*/, "", line)) suites = " " line " "
                        else if (sub(/^Types:[ \t]*/, "", line)) types = " " line " "
                        else if (sub(/^Enabled:[ \t]*/, "", line)) enabled = line
                    }
                    if (enabled != "no" && index(types, " deb ") && index(suites, " " suite " ")) {
                        split(uris, u, " "); print u[1]
                    }
                }' "$f" ;;
            esac
        done
        # One-line format: deb [options] URI SUITE COMPONENTS...
        for f in "${files[@]}"; do
            case "$f" in *.list) sed -E -n 's/^deb[ \t]+(\[[^]]*\][ \t]+)?//p' "$f" \
                | awk -v suite="$suite" '$2 == suite { print $1 }' ;;
            esac
        done
    } | head -n 1
}

mirror=${TITRA_DEBIAN_MIRROR:-$(apt_mirror)}
mirror=${mirror:-http://deb.debian.org/debian}

workdir=$(mktemp -d /var/tmp/titra-base.XXXXXX)
rootfs=$workdir/rootfs
log=$workdir/debootstrap.log
cleanup() {
    # debootstrap mounts /proc and /sys inside while it works; never follow them out of the folder.
    umount -l "$rootfs/proc" "$rootfs/sys" 2>/dev/null || true
    rm -rf --one-file-system "$workdir"
}
trap cleanup EXIT

echo "build-base-image: debootstrap $suite from $mirror (about a minute)"
started=$SECONDS
debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" \
    >"$log" 2>&1 || { tail -n 30 "$log" >&2; exit 1; }
# What a container never needs: the downloaded .debs and package lists, device nodes (Docker
# provides /dev) and the build host's name.
rm -rf "${rootfs:?}"/var/cache/apt/archives/*.deb "${rootfs:?}"/var/lib/apt/lists/* "${rootfs:?}"/dev/*
rm -f "$rootfs/etc/hostname"

tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "debootstrap --variant=minbase --include=$packages $suite ($mirror)" \
    - "$image" >/dev/null
echo "build-base-image: $image built in $((SECONDS - started)) s"
