#!/usr/bin/env bash
# localhub-speed.sh: download speed of the local Hub test server
# (tests/localhub/localhub.py) against nginx serving the same 1 GiB file.
#
# It creates a 1 GiB random file in a temp dir, serves it with nginx on
# 127.0.0.1 and uploads it to a local Hub (raw LFS flow: batch, PUT, commit,
# with curl), then measures with curl (MB = 10^6 bytes, median of RUNS runs):
#   whole GET    nginx | Hub resolve URL (302 followed with -L) | Hub CDN URL
#   1 MiB ranges nginx | Hub CDN URL | Hub resolve URL (-L): the whole file in
#                1 MiB Range requests, in order, one curl process, keep-alive
# and prints each MB/s and the ratio local Hub / nginx.  Everything it starts
# and writes is removed on exit.
#
#   HUBFS_SRCDIR   source top dir (default: the parent of this script's dir)
#   BENCH_SIZE_MIB file size in MiB (default 1024)
#   BENCH_RUNS     runs per measurement (default 3)
#   NGINX          nginx binary (default /usr/sbin/nginx)
#   PYTHON3        the Python that runs the local Hub (default python3)

set -u

here=$(cd "$(dirname "$0")" && pwd)
HUBFS_SRCDIR=${HUBFS_SRCDIR:-$(cd "$here/.." && pwd)}
server=$HUBFS_SRCDIR/tests/localhub/localhub.py
size_mib=${BENCH_SIZE_MIB:-1024}
runs=${BENCH_RUNS:-3}
nginx=${NGINX:-/usr/sbin/nginx}
python=${PYTHON3:-python3}
token=hf_seed_alice_write_0000000000000000
user=alice
repo=bench-speed
file=bench.bin

die() {
	echo "localhub-speed: $*" >&2
	exit 1
}
for tool in curl "$python" sha256sum awk; do
	command -v "$tool" >/dev/null 2>&1 || die "$tool not installed"
done
[ -f "$server" ] || die "local Hub server not found: $server"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/hubfs-bench.XXXXXX") || die "mktemp -d failed"
pids=()
cleanup() {
	trap '' INT TERM
	local pid i
	for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
	for pid in "${pids[@]}"; do
		for ((i = 0; i < 50; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	done
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
	"$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
mbps() { # bytes seconds
	awk -v b="$1" -v s="$2" 'BEGIN { printf "%.1f", (s > 0 ? b / s / 1e6 : 0) }'
}
median() { # values...
	printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

# --- the file ---------------------------------------------------------------------

chmod 755 "$tmp" # nginx workers run as nobody when started as root
mkdir -p "$tmp/www" "$tmp/nginx" "$tmp/hub"
chmod 755 "$tmp/www"
echo "creating a ${size_mib} MiB random file..." >&2
head -c "$((size_mib * 1024 * 1024))" /dev/urandom >"$tmp/www/$file" || die "cannot write the file"
chmod 644 "$tmp/www/$file"
size=$(stat -c %s "$tmp/www/$file")
sha=$(sha256sum "$tmp/www/$file" | cut -d ' ' -f 1)

# --- nginx ------------------------------------------------------------------------------

nginx_url=
if [ -x "$nginx" ]; then
	port=$(free_port)
	cat >"$tmp/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log;
events { worker_connections 64; }
http {
	access_log off;
	client_body_temp_path $tmp/nginx/body;
	proxy_temp_path $tmp/nginx/proxy;
	fastcgi_temp_path $tmp/nginx/fastcgi;
	uwsgi_temp_path $tmp/nginx/uwsgi;
	scgi_temp_path $tmp/nginx/scgi;
	# the fastest static-file setup measured on this VM: with sendfile on,
	# nginx gave ~1.1 GB/s here, with sendfile off and 1 MiB buffers ~2.9 GB/s
	sendfile off;
	output_buffers 1 1m;
	keepalive_requests 100000;
	server {
		listen 127.0.0.1:$port;
		root $tmp/www;
	}
}
EOF
	"$nginx" -p "$tmp/nginx" -e "$tmp/nginx/error.log" -c "$tmp/nginx/nginx.conf" -g 'daemon off;' \
		>"$tmp/nginx/stdout.log" 2>&1 &
	pids+=("$!")
	for ((i = 0; i < 100; i++)); do
		curl -sf -o /dev/null -r 0-0 "http://127.0.0.1:$port/$file" && nginx_url="http://127.0.0.1:$port/$file" && break
		sleep 0.1
	done
	[ -n "$nginx_url" ] || { echo "localhub-speed: nginx did not start:" >&2; cat "$tmp/nginx/error.log" >&2; }
else
	echo "localhub-speed: $nginx not found (apt-get install nginx-light); measuring the local Hub only" >&2
fi

# --- local Hub ----------------------------------------------------------------------------

"$python" "$server" --root "$tmp/hub/root" --host 127.0.0.1 --port 0 --port-file "$tmp/hub/url" --seed \
	>"$tmp/hub/server.log" 2>&1 &
pids+=("$!")
hub=
for ((i = 0; i < 100; i++)); do
	[ -s "$tmp/hub/url" ] && hub=$(head -n 1 "$tmp/hub/url" | tr -d '\r\n') && [ -n "$hub" ] && break
	kill -0 "${pids[-1]}" 2>/dev/null || break
	sleep 0.1
done
[ -n "$hub" ] || { cat "$tmp/hub/server.log" >&2; die "the local Hub did not start within 10 s"; }
sleep 0.2

json() { # python expression on the JSON document in $1 (as d)
	"$python" -c 'import json, sys; d = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}
api() { # method url content-type body-file out-file: prints the HTTP status
	curl -s -o "$5" -w '%{http_code}' -X "$1" -H "Authorization: Bearer $token" \
		-H "Content-Type: $3" -H 'Accept: application/json, application/vnd.git-lfs+json' --data-binary "@$4" "$2"
}

echo "uploading it to the local Hub at $hub..." >&2
printf '{"name":"%s","organization":"%s","type":"model"}' "$repo" "$user" >"$tmp/hub/create.json"
st=$(api POST "$hub/api/repos/create" application/json "$tmp/hub/create.json" "$tmp/hub/out.json")
[ "$st" = 200 ] || die "repos/create answered $st: $(cat "$tmp/hub/out.json")"
printf '{"operation":"upload","transfers":["basic","multipart"],"hash_algo":"sha256","ref":{"name":"main"},"objects":[{"oid":"%s","size":%s}]}' \
	"$sha" "$size" >"$tmp/hub/batch.json"
st=$(api POST "$hub/$user/$repo.git/info/lfs/objects/batch" application/vnd.git-lfs+json "$tmp/hub/batch.json" "$tmp/hub/batch-out.json")
[ "$st" = 200 ] || die "LFS batch answered $st: $(cat "$tmp/hub/batch-out.json")"
href=$(json "$tmp/hub/batch-out.json" '((d["objects"][0].get("actions") or {}).get("upload") or {}).get("href", "")')
chunk=$(json "$tmp/hub/batch-out.json" '((d["objects"][0].get("actions") or {}).get("upload") or {}).get("header", {}).get("chunk_size", "")')
[ -z "$chunk" ] || die "the server asked for a multipart upload; start it without --lfs-chunk-size"
if [ -n "$href" ]; then
	st=$(curl -s -o "$tmp/hub/put-out" -w '%{http_code}' -T "$tmp/www/$file" "$href")
	case $st in 2??) ;; *) die "LFS PUT answered $st: $(head -c 300 "$tmp/hub/put-out")" ;; esac
fi
printf '{"key":"header","value":{"summary":"Add %s"}}\n{"key":"lfsFile","value":{"path":"%s","algo":"sha256","oid":"%s","size":%s}}\n' \
	"$file" "$file" "$sha" "$size" >"$tmp/hub/commit.ndjson"
st=$(api POST "$hub/api/models/$user/$repo/commit/main" application/x-ndjson "$tmp/hub/commit.ndjson" "$tmp/hub/out.json")
[ "$st" = 200 ] || die "commit answered $st: $(cat "$tmp/hub/out.json")"

resolve_url="$hub/$user/$repo/resolve/main/$file"
cdn_url=$(curl -s -o /dev/null -w '%{redirect_url}' "$resolve_url")
[ -n "$cdn_url" ] || die "resolve of the LFS file did not redirect"
got=$(curl -s -L "$resolve_url" | sha256sum | cut -d ' ' -f 1)
[ "$got" = "$sha" ] || die "the local Hub served different bytes (sha256 $got, want $sha)"

# --- measurements -------------------------------------------------------------------------

whole() { # url [curl args]: prints MB/s of one whole-file GET
	local url=$1 speed
	shift
	speed=$(curl -s -o /dev/null -w '%{speed_download}' "$@" "$url") || return 1
	awk -v s="$speed" 'BEGIN { printf "%.1f", s / 1e6 }'
}
ranged() { # url [location]: prints MB/s of the whole file read in 1 MiB ranges by one curl
	local url=$1 follow=${2:-} cfg=$tmp/ranges.cfg out=$tmp/ranges.out t0 t1
	awk -v url="$url" -v size="$size" -v follow="$follow" 'BEGIN {
		for (off = 0; off < size; off += 1048576) {
			end = off + 1048575; if (end >= size) end = size - 1
			if (off > 0) print "next"
			printf "url = \"%s\"\nrange = \"%d-%d\"\noutput = \"/dev/null\"\nsilent\n", url, off, end
			if (follow != "") print "location"
			print "write-out = \"%{http_code} %{size_download} %{num_connects}\\n\""
		}
	}' >"$cfg"
	t0=$(date +%s%N)
	curl -K "$cfg" >"$out" || return 1
	t1=$(date +%s%N)
	awk -v size="$size" -v ns="$((t1 - t0))" '
		$1 != 206 { bad++ } { bytes += $2; conns += $3 }
		END {
			if (bad || bytes != size) { printf "error: %d non-206 answers, %d bytes of %d\n", bad, bytes, size > "/dev/stderr"; exit 1 }
			printf "%.1f %d\n", bytes / (ns / 1e9) / 1e6, conns
		}' "$out"
}
measure() { # key cmd...: runs cmd once to warm up, then $runs times; sets res[key], conns[key]
	local key=$1 r v vals=()
	shift
	"$@" >/dev/null || { echo "localhub-speed: $key failed" >&2; return; }
	for ((r = 0; r < runs; r++)); do
		v=$("$@") || { echo "localhub-speed: $key failed" >&2; return; }
		[ "${v#* }" != "$v" ] && conns[$key]=${v#* } && v=${v%% *}
		vals+=("$v")
	done
	res[$key]=$(median "${vals[@]}")
}

echo "measuring (median of $runs runs after a warm-up run)..." >&2
declare -A res conns
if [ -n "$nginx_url" ]; then
	measure nginx_whole whole "$nginx_url"
	measure nginx_ranged ranged "$nginx_url"
fi
measure hub_resolve_whole whole "$resolve_url" -L
measure hub_cdn_whole whole "$cdn_url"
measure hub_cdn_ranged ranged "$cdn_url"
measure hub_resolve_ranged ranged "$resolve_url" location

row() { # label key [reference-key]
	local v=${res[$2]:-n/a} ref='' ratio='' note=''
	[ -n "${3:-}" ] && ref=${res[$3]:-}
	if [ "$v" != n/a ] && [ -n "$ref" ]; then
		ratio=$(awk -v v="$v" -v r="$ref" 'BEGIN { if (r > 0) printf "%.2f", v / r }')
	fi
	[ -n "${conns[$2]:-}" ] && note="${conns[$2]} connection(s) per run"
	printf '%-46s %9s %13s  %s\n' "$1" "$v" "$ratio" "$note"
}

echo
echo "local Hub vs nginx: ${size_mib} MiB file on loopback, MB/s (10^6 bytes/s), median of $runs"
printf '%-46s %9s %13s  %s\n' "measurement" "MB/s" "Hub / nginx" ""
row "nginx, whole GET" nginx_whole
row "local Hub resolve URL, whole GET (-L)" hub_resolve_whole nginx_whole
row "local Hub CDN URL, whole GET" hub_cdn_whole nginx_whole
row "nginx, 1 MiB ranges, keep-alive" nginx_ranged
row "local Hub CDN URL, 1 MiB ranges, keep-alive" hub_cdn_ranged nginx_ranged
row "local Hub resolve URL, 1 MiB ranges (-L)" hub_resolve_ranged nginx_ranged
