#!/bin/sh
# Runs the @huggingface/hub conformance suite (conformance.mjs) against two
# local Hub servers (tests/localhub/localhub.py) and passes its TAP through.
#
#   HUBFS_SRCDIR        source top dir (default: two levels above this script)
#   HUBFS_BUILDDIR      build top dir (default: HUBFS_SRCDIR); nothing is written
#                       there, every file goes to a mktemp -d dir removed on exit
#   HUBFS_NODE_MODULES  a node_modules dir holding @huggingface/hub (default:
#                       node_modules beside this script, else `npm ci` from
#                       package-lock.json into the temp dir)
#   HUBFS_CONFORMANCE_TIMEOUT  seconds allowed to the whole node run (default 300)
#   PYTHON3             the Python that runs the local Hub (default python3)
#
# Exit status: node's (0 when every check passed); the TAP plan "1..0 # SKIP"
# with status 0 when node (or npm, when it is needed) is missing.

set -u

here=$(cd "$(dirname "$0")" && pwd)
HUBFS_SRCDIR=${HUBFS_SRCDIR:-$(cd "$here/../.." && pwd)}
HUBFS_BUILDDIR=${HUBFS_BUILDDIR:-$HUBFS_SRCDIR}
server=$HUBFS_SRCDIR/tests/localhub/localhub.py
python=${PYTHON3:-python3}
small_chunk=5242880
small_page=3

skip() {
	echo "1..0 # SKIP $*"
	exit 0
}
bail() {
	echo "Bail out! $*"
	exit 1
}
diag_file() { # file: print its last 20 lines as TAP diagnostics
	[ -f "$1" ] && tail -n 20 "$1" | sed 's/^/#   /'
	return 0
}

command -v node >/dev/null 2>&1 || skip "node not installed"
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)' ||
	skip "node $(node --version) is older than 18"
command -v "$python" >/dev/null 2>&1 || skip "$python not installed"
[ -f "$server" ] || bail "local Hub server not found: $server"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/hubfs-conformance.XXXXXX") || bail "mktemp -d failed"
pids=""

# shellcheck disable=SC2317 # called from the EXIT trap
cleanup() {
	trap '' INT TERM
	for pid in $pids; do
		kill -TERM "$pid" 2>/dev/null
	done
	for pid in $pids; do
		i=0
		while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 50 ]; do
			sleep 0.1
			i=$((i + 1))
		done
		kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	done
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# --- @huggingface/hub --------------------------------------------------------

pkg=$tmp/pkg
mkdir "$pkg" || bail "cannot create $pkg"
cp "$here/conformance.mjs" "$here/package.json" "$here/package-lock.json" "$pkg/" ||
	bail "cannot copy the suite from $here"

if [ -n "${HUBFS_NODE_MODULES:-}" ]; then
	[ -d "$HUBFS_NODE_MODULES/@huggingface/hub" ] ||
		bail "HUBFS_NODE_MODULES=$HUBFS_NODE_MODULES has no @huggingface/hub"
	ln -s "$HUBFS_NODE_MODULES" "$pkg/node_modules"
elif [ -d "$here/node_modules/@huggingface/hub" ]; then
	ln -s "$here/node_modules" "$pkg/node_modules"
else
	command -v npm >/dev/null 2>&1 || skip "npm not installed and no node_modules (run npm ci in tests/conformance)"
	if ! (cd "$pkg" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error) >"$tmp/npm.log" 2>&1; then
		if grep -Eq 'ENOTFOUND|EAI_AGAIN|ETIMEDOUT|ECONNREFUSED|ECONNRESET|ENETUNREACH|network' "$tmp/npm.log"; then
			diag_file "$tmp/npm.log"
			skip "npm ci could not reach the npm registry"
		fi
		diag_file "$tmp/npm.log"
		bail "npm ci failed in a copy of $here"
	fi
fi
want=$(node -p 'require(process.argv[1]).dependencies["@huggingface/hub"]' "$pkg/package.json")
have=$(node -p 'require(process.argv[1]).version' "$pkg/node_modules/@huggingface/hub/package.json")
[ "$want" = "$have" ] ||
	echo "# warning: package.json pins @huggingface/hub $want but node_modules has $have"

# --- local Hub servers ---------------------------------------------------------

PYTHONDONTWRITEBYTECODE=1 # no __pycache__ in a (possibly read-only) source tree
export PYTHONDONTWRITEBYTECODE

start_server() { # name extra-args...: starts one server in the background
	name=$1
	shift
	mkdir -p "$tmp/root-$name"
	"$python" "$server" --root "$tmp/root-$name" --host 127.0.0.1 --port 0 \
		--port-file "$tmp/$name.url" --seed "$@" >"$tmp/$name.log" 2>&1 &
	last_pid=$!
	pids="$pids $last_pid"
}

wait_server() { # name pid: prints the base URL once the port file is complete
	i=0
	while [ "$i" -lt 100 ]; do
		if [ -s "$tmp/$1.url" ]; then
			u1=$(head -n 1 "$tmp/$1.url" | tr -d '\r\n')
			sleep 0.1
			u2=$(head -n 1 "$tmp/$1.url" | tr -d '\r\n')
			case $u2 in
			http://*:[0-9]*)
				if [ "$u1" = "$u2" ]; then
					echo "$u2"
					return 0
				fi
				;;
			esac
		fi
		kill -0 "$2" 2>/dev/null || return 1
		sleep 0.1
		i=$((i + 1))
	done
	return 1
}

start_server main
pid_main=$last_pid
start_server small --lfs-chunk-size "$small_chunk" --page-size "$small_page"
pid_small=$last_pid

url_main=$(wait_server main "$pid_main") || {
	echo "# log of the main server:"
	diag_file "$tmp/main.log"
	bail "local Hub (main) did not write its port file within 10 s"
}
url_small=$(wait_server small "$pid_small") || {
	echo "# log of the small server:"
	diag_file "$tmp/small.log"
	bail "local Hub (--lfs-chunk-size $small_chunk --page-size $small_page) did not write its port file within 10 s"
}

# --- the suite -------------------------------------------------------------------

HUB_URL=$url_main
HUB_URL_SMALL=$url_small
HUB_SMALL_CHUNK_SIZE=$small_chunk
HUB_SMALL_PAGE_SIZE=$small_page
export HUB_URL HUB_URL_SMALL HUB_SMALL_CHUNK_SIZE HUB_SMALL_PAGE_SIZE

limit=${HUBFS_CONFORMANCE_TIMEOUT:-300}
if command -v timeout >/dev/null 2>&1; then
	timeout -k 10 "$limit" node "$pkg/conformance.mjs" &
else
	node "$pkg/conformance.mjs" &
fi
node_pid=$!
pids="$node_pid $pids"
wait "$node_pid"
status=$?
pids=${pids#"$node_pid "}
if [ "$status" -eq 124 ]; then
	echo "# conformance.mjs was stopped after $limit s"
fi
if [ "$status" -ne 0 ]; then
	for name in main small; do
		echo "# last lines of the $name server's output:"
		diag_file "$tmp/$name.log"
	done
fi
exit "$status"
