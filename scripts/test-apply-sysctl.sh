#!/usr/bin/env bash
# Tests of scripts/apply-sysctl.sh against a fake /proc/sys tree (C100K_SYSCTL_ROOT), so they
# hold on any machine: --check exits 0 when the tree matches the profile and 1 when a key
# differs; applying sets every key and is idempotent; keys the kernel lacks are skipped; an
# unparsable line fails.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "test-apply-sysctl: FAIL: $*" >&2; exit 1; }
apply() { C100K_SYSCTL_ROOT=$tmp/sys "$root/scripts/apply-sysctl.sh" "$@"; }

cat >"$tmp/profile.conf" <<'CONF'
# a comment
net.core.somaxconn = 65535
net.ipv4.ip_local_port_range = 1024	65535
fs.nr_open=2000000
net.netfilter.nf_conntrack_max = 1048576
CONF
mkdir -p "$tmp/sys/net/core" "$tmp/sys/net/ipv4" "$tmp/sys/fs"
echo 4096 >"$tmp/sys/net/core/somaxconn"
printf '32768\t60999\n' >"$tmp/sys/net/ipv4/ip_local_port_range"
echo 1048576 >"$tmp/sys/fs/nr_open"
# (no net/netfilter: a kernel without conntrack)

out=$(apply --check "$tmp/profile.conf") && fail "--check passed on a differing tree: $out"
grep -q "3 differ, 1 not on this kernel" <<<"$out" || fail "--check summary: $out"
[ "$(cat "$tmp/sys/net/core/somaxconn")" = 4096 ] || fail "--check changed a value"

out=$(apply "$tmp/profile.conf") || fail "applying failed: $out"
grep -q "3 set, 0 already set, 1 not on this kernel, 0 failed" <<<"$out" || fail "apply summary: $out"
[ "$(cat "$tmp/sys/net/core/somaxconn")" = 65535 ] || fail "somaxconn not set"
[ "$(tr -s ' \t' '  ' <"$tmp/sys/net/ipv4/ip_local_port_range")" = "1024 65535" ] || fail "port range not set"

out=$(apply --check "$tmp/profile.conf") || fail "--check failed on a matching tree: $out"
out=$(apply "$tmp/profile.conf") || fail "re-applying failed: $out"
grep -q "0 set, 3 already set" <<<"$out" || fail "not idempotent: $out"

echo "this is not a sysctl line" >>"$tmp/profile.conf"
apply --check "$tmp/profile.conf" >/dev/null 2>&1 && fail "an unparsable line passed"

# The shipped profile parses cleanly (every line a key = value or a comment).
out=$(apply --check "$root/sysctl/99-c100k.conf" 2>&1) || true
grep -q "cannot parse" <<<"$out" && fail "the shipped profile has an unparsable line: $out"
echo "test-apply-sysctl: ok"
