#!/bin/bash
# The command line: --help, --version, planned and unknown commands.  TAP.
set -u
hubfs=${HUBFS_BUILDDIR:-.}/hubfs
n=0
failed=0
check() { # check DESCRIPTION COMMAND...
	local desc=$1
	shift
	n=$((n + 1))
	if "$@"; then echo "ok $n - $desc"; else echo "not ok $n - $desc"; failed=1; fi
}

out=$("$hubfs" --help); rc=$?
check "--help exits 0" test $rc -eq 0
for cmd in mount umount status cache; do
	check "--help lists '$cmd'" grep -q "^  $cmd" <<<"$out"
done
out=$("$hubfs" --version); rc=$?
check "--version exits 0" test $rc -eq 0
check "--version names hubfs and its version" grep -qx "hubfs [0-9][0-9.]*" <<<"$(head -n1 <<<"$out")"
check "--version names libfuse" grep -q "^libfuse 3\." <<<"$out"
check "--version names libcurl" grep -q "^libcurl/" <<<"$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
out=$("$hubfs" status --cache-dir "$tmp/cache" 2>&1); rc=$?
check "status of an empty cache exits 0" test $rc -eq 0
check "status of an empty cache says nothing is pending" grep -q "nothing pending" <<<"$out"
err=$("$hubfs" status --bogus 2>&1); rc=$?
check "status with a bad option exits 2" test $rc -eq 2
err=$("$hubfs" status "$tmp" 2>&1); rc=$?
check "status of a directory that is not a hubfs mount exits 1" test $rc -eq 1
check "status says it is not a hubfs mount" grep -q "is not a hubfs mount" <<<"$err"
err=$("$hubfs" status "$tmp" --cache-dir "$tmp/cache" 2>&1); rc=$?
check "status with a mountpoint and --cache-dir exits 2" test $rc -eq 2
out=$("$hubfs" umount --help); rc=$?
check "umount --help exits 0" test $rc -eq 0
check "umount --help tells exit status 3" grep -q "3 when unmounted but changes stay staged" <<<"$(tr '\n' ' ' <<<"$out" | tr -s ' ')"
out=$("$hubfs" mount --help); rc=$?
check "mount --help lists --hf-cache and --no-hf-cache" \
	grep -q -- "--hf-cache DIR.*--no-hf-cache" <<<"$(tr '\n' ' ' <<<"$out")"
err=$("$hubfs" mount --hf-cache= "$tmp" 2>&1); rc=$?
check "mount --hf-cache with no directory exits 2" test $rc -eq 2
check "and says a directory is wanted" grep -q -- "--hf-cache: a directory" <<<"$err"
"$hubfs" umount >/dev/null 2>&1; rc=$?
check "umount without a mountpoint exits 2" test $rc -eq 2
err=$("$hubfs" frobnicate 2>&1); rc=$?
check "an unknown command exits 2" test $rc -eq 2
check "an unknown command is named in the error" grep -q "'frobnicate'" <<<"$err"
"$hubfs" >/dev/null 2>&1; rc=$?
check "no command exits 2" test $rc -eq 2
echo "1..$n"
exit $failed
