#!/usr/bin/env bash
# Apply c100k's kernel profile (sysctl/99-c100k.conf) to the running kernel, or only check it.
#
# usage: scripts/apply-sysctl.sh [--check] [PROFILE]
#   --check   report which keys differ from the profile; change nothing (any user); exits 1 when
#             any key differs, 0 when the kernel matches the profile
#   PROFILE   a sysctl.d-style file (default: sysctl/99-c100k.conf)
#   C100K_SYSCTL_ROOT  the tree to read and write instead of /proc/sys (for tests)
#
# Applying needs root. It is idempotent: keys already at their value are left alone. Each key is
# printed with its value before -> after; keys this kernel does not have (e.g. conntrack when
# the module is not loaded) are skipped with a message. Nothing but the profile's keys is touched,
# and nothing is made persistent: for that, copy the profile to /etc/sysctl.d/.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
check=0
profile=$root/sysctl/99-c100k.conf
for arg in "$@"; do
  case $arg in
    --check) check=1 ;;
    -h|--help) sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "apply-sysctl: unknown option $arg" >&2; exit 2 ;;
    *) profile=$arg ;;
  esac
done
[ -r "$profile" ] || { echo "apply-sysctl: cannot read $profile" >&2; exit 2; }
sysroot=${C100K_SYSCTL_ROOT:-/proc/sys}
if [ "$check" = 0 ] && [ "$(id -u)" != 0 ] && [ -z "${C100K_SYSCTL_ROOT:-}" ]; then
  echo "apply-sysctl: applying needs root (use --check to only compare)" >&2
  exit 1
fi

norm() { tr -s ' \t\n' '   ' | sed -e 's/^ //' -e 's/ $//'; }

same=0 changed=0 differ=0 skipped=0 failed=0
while IFS= read -r line || [ -n "$line" ]; do
  line=${line%%#*}
  [[ $line =~ ^[[:space:]]*$ ]] && continue
  if [[ ! $line =~ ^[[:space:]]*([A-Za-z0-9_.-]+)[[:space:]]*=[[:space:]]*(.*[^[:space:]])[[:space:]]*$ ]]; then
    echo "apply-sysctl: cannot parse: $line" >&2
    failed=$((failed + 1))
    continue
  fi
  key=${BASH_REMATCH[1]}
  want=$(printf '%s' "${BASH_REMATCH[2]}" | norm)
  path=$sysroot/${key//.//}
  if [ ! -e "$path" ]; then
    echo "skip     $key: not on this kernel (module not loaded?)"
    skipped=$((skipped + 1))
    continue
  fi
  cur=$(norm <"$path")
  if [ "$cur" = "$want" ]; then
    echo "ok       $key = $cur"
    same=$((same + 1))
  elif [ "$check" = 1 ]; then
    echo "differs  $key: $cur (profile: $want)"
    differ=$((differ + 1))
  elif printf '%s\n' "$want" >"$path" 2>/dev/null && [ "$(norm <"$path")" = "$want" ]; then
    echo "set      $key: $cur -> $want"
    changed=$((changed + 1))
  else
    echo "FAILED   $key: $cur, could not set $want (now: $(norm <"$path"))" >&2
    failed=$((failed + 1))
  fi
done <"$profile"

if [ "$check" = 1 ]; then
  echo "apply-sysctl --check: $same as in the profile, $differ differ, $skipped not on this kernel"
  [ "$differ" = 0 ] && [ "$failed" = 0 ]
  exit
else
  echo "apply-sysctl: $changed set, $same already set, $skipped not on this kernel, $failed failed"
fi
[ "$failed" = 0 ]
