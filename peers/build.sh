#!/usr/bin/env bash
# Builds the real upstream that svcplane's tests and benchmarks run against, from the pinned Go
# modules beside this script: kube-apiserver, kube-controller-manager, kubectl and kubeadm
# (Kubernetes v1.37.2), CoreDNS, Helm v4 and etcd 3.6 with etcdctl.
#
#   bash peers/build.sh              # every peer
#   bash peers/build.sh kubectl      # only the named binaries
#
# Binaries are built once into a cache outside the clone, keyed by a hash of the go.mod and
# go.sum files and of this script ($XDG_CACHE_HOME/svcplane/peers/<hash>/, default
# ~/.cache/...), then hard-linked (or copied) into <workspace>/target/peers/bin/. A rerun with
# nothing changed only links. Everything comes from the Go module proxy.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
workspace=$(dirname "$here")

say() { printf 'peers: %s\n' "$*" >&2; }

# --- Go itself -------------------------------------------------------------------------------
if ! command -v go >/dev/null 2>&1; then
    say "Go 1.26 or newer must be on PATH to build the test peers (kube-apiserver, CoreDNS, Helm, etcd); install Go and run this again."
    exit 1
fi
go_version=$(go env GOVERSION) # e.g. go1.26.8
minor=$(printf '%s' "$go_version" | sed -E 's/^go1\.([0-9]+).*/\1/')
if ! [[ "$go_version" =~ ^go1\.[0-9]+ ]] || [ "$minor" -lt 26 ]; then
    say "Go 1.26 or newer must be on PATH to build the test peers, but $(command -v go) is $go_version; install Go 1.26 and run this again."
    exit 1
fi

# --- What each binary is ----------------------------------------------------------------------
# name | peer module folder | package | -ldflags
k8s_version=v1.37.2
k8s_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    k8s_ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=37"
    k8s_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=2026-01-01T00:00:00Z"
done
binaries=(
    "kube-apiserver|kubernetes|k8s.io/kubernetes/cmd/kube-apiserver|$k8s_ldflags"
    "kube-controller-manager|kubernetes|k8s.io/kubernetes/cmd/kube-controller-manager|$k8s_ldflags"
    "kubectl|kubernetes|k8s.io/kubernetes/cmd/kubectl|$k8s_ldflags"
    "kubeadm|kubernetes|k8s.io/kubernetes/cmd/kubeadm|$k8s_ldflags"
    "coredns|coredns|github.com/coredns/coredns|"
    "helm|helm|helm.sh/helm/v4/cmd/helm|-X helm.sh/helm/v4/internal/version.version=v4.3.2 -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
    "etcd|etcd|go.etcd.io/etcd/server/v3|"
    "etcdctl|etcd|go.etcd.io/etcd/etcdctl/v3|"
)

wanted=("$@")
if [ ${#wanted[@]} -eq 0 ]; then
    for row in "${binaries[@]}"; do wanted+=("${row%%|*}"); done
fi
for name in "${wanted[@]}"; do
    if ! printf '%s\n' "${binaries[@]}" | grep -q "^$name|"; then
        say "unknown peer binary '$name'; known: $(printf '%s\n' "${binaries[@]}" | cut -d'|' -f1 | tr '\n' ' ')"
        exit 2
    fi
done

# --- The cache ----------------------------------------------------------------------------------
key=$(cat "$here"/*/go.mod "$here"/*/go.sum "$here/build.sh" | sha256sum | cut -c1-16)
cache="${XDG_CACHE_HOME:-$HOME/.cache}/svcplane/peers/$key"
out="$workspace/target/peers/bin"
mkdir -p "$cache" "$out"

export CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local
# Go's compile cache for these builds reaches about 6 GiB and is worth nothing once the binaries
# are cached: it lives beside the cache and goes when this script ends, so that the Rust build
# that follows in CI has the disk.
export GOCACHE="$cache.gocache"
trap 'rm -rf "$GOCACHE"' EXIT
start=$(date +%s)
for row in "${binaries[@]}"; do
    IFS='|' read -r name module package ldflags <<<"$row"
    printf '%s\n' "${wanted[@]}" | grep -qx "$name" || continue
    if [ ! -x "$cache/$name" ]; then
        say "building $name ($package) with $go_version"
        t0=$(date +%s)
        (cd "$here/$module" && go build -mod=readonly -trimpath -ldflags "-s -w $ldflags" -o "$cache/$name.tmp" "$package")
        mv "$cache/$name.tmp" "$cache/$name"
        say "built $name in $(($(date +%s) - t0)) s"
    fi
    rm -f "$out/$name"
    ln "$cache/$name" "$out/$name" 2>/dev/null || cp "$cache/$name" "$out/$name"
done
# Builds of older pins are dead weight (about 550 MiB each): keep only this one.
for old in "$(dirname "$cache")"/*; do
    [ "$old" = "$cache" ] || rm -rf "$old"
done
say "ready in $(($(date +%s) - start)) s: ${wanted[*]} in $out (cache $cache)"
