#!/usr/bin/env bash
# Snapshot benchmark: a 1 GiB / 10,000-file tree, created here and removed after.
#   first snapshot vs `cp -a`; second snapshot of the unchanged tree;
#   restore into a sandbox for 1 GiB vs 10 MiB (copy-on-write: ratio near 1);
#   restore into a directory vs `cp -a`; store size for two nearly equal snapshots.
# Usage: bench/snapshots.sh [path/to/aisbx]   (default: target/<host tuple>/release/aisbx)
set -euo pipefail
AISBX=${1:-target/$(rustc -vV | sed -n 's/^host: //p')/release/aisbx}
[ -x "$AISBX" ] || { echo "build first: cargo build --release (or pass the binary)" >&2; exit 2; }
AISBX=$(realpath "$AISBX")
W=$(mktemp -d "${TMPDIR:-/tmp}/aisbx-bench-snap.XXXXXX")
trap 'rm -rf "$W"' EXIT
export AISBX_HOME="$W/home"
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l | xargs printf '%.3f'; }
mk_tree() { # dir, files, bytes per file
  mkdir -p "$1"
  python3 - "$1" "$2" "$3" <<'PY'
import os, sys
root, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    d = os.path.join(root, f"d{i % 100:02d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05d}.bin"), "wb") as f:
        f.write(os.urandom(size))
PY
}
echo "creating trees in $W ..." >&2
mk_tree "$W/big" 10000 $((1024 * 1024 * 1024 / 10000))
mk_tree "$W/small" 10000 $((10 * 1024 * 1024 / 10000))
sync

t0=$(now); cp -a "$W/big" "$W/cp1"; sync; t1=$(now)
cp_s=$(secs "$t0" "$t1"); rm -rf "$W/cp1"
t0=$(now); "$AISBX" snap create big1 --workdir "$W/big" >/dev/null; t1=$(now)
snap1_s=$(secs "$t0" "$t1")
t0=$(now); "$AISBX" snap create big2 --workdir "$W/big" >/dev/null; t1=$(now)
snap2_s=$(secs "$t0" "$t1")
"$AISBX" snap create small --workdir "$W/small" >/dev/null

# Restore into a sandbox: the first restore materializes the tree (links, no data);
# later ones reuse it. Both are timed.
t0=$(now); "$AISBX" snap restore big1 --sandbox sb-big >/dev/null; t1=$(now)
rbig_first=$(secs "$t0" "$t1")
t0=$(now); "$AISBX" snap restore big1 --sandbox sb-big2 >/dev/null; t1=$(now)
rbig=$(secs "$t0" "$t1")
t0=$(now); "$AISBX" snap restore small --sandbox sb-small >/dev/null; t1=$(now)
rsmall_first=$(secs "$t0" "$t1")
t0=$(now); "$AISBX" snap restore small --sandbox sb-small2 >/dev/null; t1=$(now)
rsmall=$(secs "$t0" "$t1")
files=$("$AISBX" exec sb-big -- sh -c 'find /workspace -type f | wc -l')

t0=$(now); "$AISBX" snap restore big1 --workdir "$W/restored" >/dev/null; sync; t1=$(now)
rdir_s=$(secs "$t0" "$t1"); rm -rf "$W/restored"
t0=$(now); cp -a "$W/big" "$W/cp2"; sync; t1=$(now)
cp2_s=$(secs "$t0" "$t1"); rm -rf "$W/cp2"

# Two nearly equal snapshots: change 10 files (~1 MiB) and snapshot again.
"$AISBX" rm sb-big sb-big2 sb-small sb-small2
"$AISBX" snap rm big2 small >/dev/null 2>&1
one=$(du -sb "$AISBX_HOME/snapshots/objects" | cut -f1)
for i in 0 1 2 3 4 5 6 7 8 9; do head -c 100000 /dev/urandom > "$W/big/d0$i/f0000$i.bin"; done
"$AISBX" snap create big3 --workdir "$W/big" >/dev/null
two=$(du -sb "$AISBX_HOME/snapshots/objects" | cut -f1)
"$AISBX" snap verify >/dev/null

cat <<OUT
tree: 1 GiB in 10,000 files (sandbox sees $files files)
first snapshot            ${snap1_s} s   (cp -a: ${cp_s} s)
second, unchanged tree    ${snap2_s} s
restore into a sandbox    1 GiB: ${rbig} s, 10 MiB: ${rsmall} s, ratio $(echo "$rbig / $rsmall" | bc -l | xargs printf '%.2f')
  (first restore of a snapshot materializes its tree: 1 GiB ${rbig_first} s, 10 MiB ${rsmall_first} s)
restore into a directory  ${rdir_s} s   (cp -a: ${cp2_s} s)
store: one snapshot $((one / 1048576)) MiB, two nearly equal $((two / 1048576)) MiB
OUT
