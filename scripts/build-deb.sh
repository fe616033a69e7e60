#!/bin/bash
# Builds target/xdpdns_VERSION_ARCH.deb (and its -dbgsym package) with
# debhelper from binaries cargo built before. packaging/debian is the debian/
# directory; it is staged with the binaries and the packaged files into a
# throwaway source tree, so the repository is never written to.
# Usage: scripts/build-deb.sh [PROFILE_DIR]   (default target/release)
# Prints the path of the package.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${1:-target/release}")
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
CHANGELOG=$(dpkg-parsechangelog -l packaging/debian/changelog -S Version)
if [ "$VERSION" != "$CHANGELOG" ]; then
    echo "Cargo.toml says $VERSION, packaging/debian/changelog $CHANGELOG: add a changelog entry" >&2
    exit 1
fi
ARCH=$(dpkg --print-architecture)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
SRC=$WORK/xdpdns-$VERSION
mkdir -p "$SRC/bin" "$SRC/etc" "$SRC/docs"
cp -r packaging "$SRC/packaging"
cp -r packaging/debian "$SRC/debian"
for b in xdpdns xdpdns-dataplane xdpdns-tcp xdpdns-metrics; do
    install -m 0755 "$BIN/$b" "$SRC/bin/$b"
done
# The units, users and bpffs permissions, under the names debhelper looks for.
cp packaging/systemd/xdpdns.service "$SRC/debian/xdpdns.service"
cp packaging/systemd/xdpdns@.service "$SRC/debian/xdpdns@.service"
cp packaging/systemd/sysusers.conf "$SRC/debian/xdpdns.sysusers"
cp packaging/systemd/tmpfiles.conf "$SRC/debian/xdpdns.tmpfiles"
# The example configuration, with the packaged control group.
cp packaging/xdpdns.toml "$SRC/etc/xdpdns.toml"
printf '\n[control]\n# Members of this group may run `xdpdns status`; root and the loader'"'"'s user also reload and restart queues.\ngroup = "xdpdns"\n' \
    >> "$SRC/etc/xdpdns.toml"
cp README.md "$SRC/"
cp docs/operations.md docs/security.md "$SRC/docs/"
(cd "$SRC" && dpkg-buildpackage -b -us -uc --no-check-builddeps >"$WORK/build.log" 2>&1) || {
    cat "$WORK/build.log" >&2
    exit 1
}
mkdir -p target
cp "$WORK/xdpdns_${VERSION}_${ARCH}.deb" "$WORK/xdpdns-dbgsym_${VERSION}_${ARCH}.deb" target/
echo "target/xdpdns_${VERSION}_${ARCH}.deb"
