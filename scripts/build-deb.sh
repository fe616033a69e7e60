#!/bin/bash
# Builds target/xdpdns_VERSION_ARCH.deb from already-built binaries.
# Usage: scripts/build-deb.sh [PROFILE_DIR]   (default target/release)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
ARCH=$(dpkg --print-architecture)
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
chmod 0755 "$STAGE"
OUT=target/xdpdns_${VERSION}_${ARCH}.deb

install -D -m 0755 "$BIN/xdpdns" "$STAGE/usr/sbin/xdpdns"
for w in xdpdns-dataplane xdpdns-tcp xdpdns-metrics; do
    install -D -m 0755 "$BIN/$w" "$STAGE/usr/lib/xdpdns/$w"
    install -D -m 0644 "packaging/apparmor/usr.lib.xdpdns.$w" "$STAGE/etc/apparmor.d/usr.lib.xdpdns.$w"
done
install -D -m 0644 packaging/systemd/xdpdns.service "$STAGE/lib/systemd/system/xdpdns.service"
install -D -m 0644 packaging/systemd/xdpdns@.service "$STAGE/lib/systemd/system/xdpdns@.service"
install -D -m 0644 packaging/systemd/sysusers.conf "$STAGE/usr/lib/sysusers.d/xdpdns.conf"
install -D -m 0644 packaging/systemd/tmpfiles.conf "$STAGE/usr/lib/tmpfiles.d/xdpdns.conf"
install -D -m 0644 packaging/apparmor/usr.sbin.xdpdns "$STAGE/etc/apparmor.d/usr.sbin.xdpdns"
# The example configuration, with the packaged users.
install -d "$STAGE/etc/xdpdns"
cp packaging/xdpdns.toml "$STAGE/etc/xdpdns/xdpdns.toml"
printf '\n[control]\n# Members of this group may run `xdpdns status`; root and the loader'"'"'s user also reload and restart queues.\ngroup = "xdpdns"\n' \
    >> "$STAGE/etc/xdpdns/xdpdns.toml"
chmod 0644 "$STAGE/etc/xdpdns/xdpdns.toml"
install -d "$STAGE/usr/share/man/man8"
gzip -9n < packaging/xdpdns.8 > "$STAGE/usr/share/man/man8/xdpdns.8.gz"
install -D -m 0644 README.md "$STAGE/usr/share/doc/xdpdns/README.md"
install -D -m 0644 docs/operations.md "$STAGE/usr/share/doc/xdpdns/operations.md"

install -d "$STAGE/DEBIAN"
SIZE=$(du -sk "$STAGE" | cut -f1)
cat > "$STAGE/DEBIAN/control" <<CONTROL
Package: xdpdns
Version: $VERSION
Architecture: $ARCH
Maintainer: xdpdns developers <dev@xdpdns.invalid>
Installed-Size: $SIZE
Depends: libc6 (>= 2.34), libgcc-s1
Recommends: systemd, apparmor
Section: net
Priority: optional
Description: DNS frontend whose UDP fast path runs on AF_XDP
 An XDP program hands DNS over UDP for configured addresses to one
 unprivileged dataplane process per NIC queue, which answers in place
 over AF_XDP; everything else stays on the kernel stack.
CONTROL
printf '/etc/xdpdns/xdpdns.toml\n/etc/apparmor.d/usr.sbin.xdpdns\n' > "$STAGE/DEBIAN/conffiles"
for w in xdpdns-dataplane xdpdns-tcp xdpdns-metrics; do
    echo "/etc/apparmor.d/usr.lib.xdpdns.$w" >> "$STAGE/DEBIAN/conffiles"
done
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$STAGE/DEBIAN/"

mkdir -p target
dpkg-deb --root-owner-group --build "$STAGE" "$OUT" >/dev/null
echo "$OUT"
