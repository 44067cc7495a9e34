#!/usr/bin/env bash
# Build the Pulumi engine from Go modules into a cache folder that outlives checkouts; idempotent.
#
# What lands in $VIRTPLAN_TOOLS_CACHE/pulumi-<version>/bin (default /var/cache/virtplan/tools):
#   pulumi                          the Pulumi CLI, github.com/pulumi/pulumi/pkg/v3/cmd/pulumi
#   pulumi-language-python          virtplan's own Python language host (tools/pulumi/cmd/...)
#   pulumi-language-python-exec     its program runner (tools/pulumi/)
#   pulumi-resource-pulumi-python   the dynamic-provider plugin shim (tools/pulumi/)
# The version is the one tools/pulumi/go.mod requires; every module is checked against the
# committed tools/pulumi/go.sum (-mod=readonly: a missing or different sum fails the build).
# The CLI is rebuilt only when go.mod/go.sum change, the helpers when their sources change;
# otherwise this takes well under a second. A cold build prints its time and size.
# --check builds nothing: exit 0 if the cache is up to date, 1 (saying what is stale) if not.
set -euo pipefail
CHECK=0
[ "${1:-}" = --check ] && CHECK=1
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MODULE=tools/pulumi

say() { echo "pulumi-engine: $*"; }
die() { echo "pulumi-engine: $*" >&2; exit 1; }

VERSION=$(awk '$1 == "github.com/pulumi/pulumi/pkg/v3" { print $2; exit }' "$MODULE/go.mod")
[ -n "$VERSION" ] || die "cannot read the pkg/v3 version from $MODULE/go.mod"
CACHE_ROOT=${VIRTPLAN_TOOLS_CACHE:-/var/cache/virtplan/tools}
DEST=$CACHE_ROOT/pulumi-$VERSION
BIN=$DEST/bin
mkdir -p "$BIN"

# One build at a time per cache folder (several checkouts share it).
exec 9>"$DEST/.lock"
flock 9

digest() { (cd "$MODULE" && cat "$@" | sha256sum | cut -d' ' -f1); }
cli_want=$(digest go.mod go.sum)
helpers_want=$(digest go.mod go.sum $(cd "$MODULE" && find cmd -type f | sort) \
    pulumi-language-python-exec pulumi-resource-pulumi-python)

need_cli=1
if [ -x "$BIN/pulumi" ] && [ "$(cat "$DEST/cli.stamp" 2>/dev/null)" = "$cli_want" ]; then
    need_cli=0
fi
need_helpers=1
if [ "$(cat "$DEST/helpers.stamp" 2>/dev/null)" = "$helpers_want" ] && [ -x "$BIN/pulumi-language-python" ] \
    && [ -x "$BIN/pulumi-language-python-exec" ] && [ -x "$BIN/pulumi-resource-pulumi-python" ]; then
    need_helpers=0
fi
if [ $need_cli = 0 ] && [ $need_helpers = 0 ]; then
    say "pulumi $VERSION present in $BIN"
    exit 0
fi
if [ $CHECK = 1 ]; then
    [ $need_cli = 1 ] && say "the pulumi CLI in $BIN is missing or older than $MODULE/go.mod and go.sum"
    [ $need_helpers = 1 ] && say "the Python plugins in $BIN are missing or older than $MODULE"
    exit 1
fi

command -v go >/dev/null || die "Go is needed to build the Pulumi engine (go.mod asks for $(awk '$1 == "go" { print $2 }' "$MODULE/go.mod") or later)"
export CGO_ENABLED=0
export GOFLAGS="-mod=readonly -buildvcs=false -trimpath"

if [ $need_cli = 1 ]; then
    say "building pulumi $VERSION from Go modules into $BIN (several minutes on a cold machine)"
    start=$(date +%s)
    (cd "$MODULE" && go build \
        -ldflags "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$VERSION" \
        -o "$BIN/.pulumi.new" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi) \
        || die "go build of the Pulumi CLI failed (see above)"
    mv -f "$BIN/.pulumi.new" "$BIN/pulumi"
    echo "$cli_want" >"$DEST/cli.stamp"
    say "built pulumi in $(($(date +%s) - start)) s, $(du -m "$BIN/pulumi" | cut -f1) MB"
fi

if [ $need_helpers = 1 ]; then
    say "building virtplan's Python language host and plugin shim into $BIN"
    (cd "$MODULE" && go build -ldflags "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$VERSION" \
        -o "$BIN/.pulumi-language-python.new" ./cmd/pulumi-language-python) \
        || die "go build of pulumi-language-python failed (see above)"
    mv -f "$BIN/.pulumi-language-python.new" "$BIN/pulumi-language-python"
    for script in pulumi-language-python-exec pulumi-resource-pulumi-python; do
        install -m 0755 "$MODULE/$script" "$BIN/.$script.new"
        mv -f "$BIN/.$script.new" "$BIN/$script"
    done
    echo "$helpers_want" >"$DEST/helpers.stamp"
fi

got=$("$BIN/pulumi" version 2>&1) || die "$BIN/pulumi does not run: $got"
[ "$got" = "$VERSION" ] || die "$BIN/pulumi reports version $got, expected $VERSION"
say "pulumi $VERSION ready in $BIN"
