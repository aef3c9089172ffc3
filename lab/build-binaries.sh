#!/usr/bin/env bash
# Build the lab's control-plane binaries from their published Go modules, once per version.
# Output: ${MESH_CACHE:-~/.cache/kubectl-mesh}/bin/<kube>-<etcd>-<helm>-<krew>/ (+ upstream prometheus),
# reused by later runs and CI.
# Prints the bin directory on its last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=/dev/null
. "$here/versions.env"
cache=${MESH_CACHE:-$HOME/.cache/kubectl-mesh}
bin="$cache/bin/kube-${KUBE_VERSION}_etcd-${ETCD_VERSION}_helm-${HELM_VERSION}_krew-${KREW_VERSION}"
mkdir -p "$bin"
export GOFLAGS=-buildvcs=false CGO_ENABLED=0
log() { printf '[build-binaries %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

kube_ldflags() {
  local v=${KUBE_VERSION#v} pkg=k8s.io/component-base/version
  local major=${v%%.*} rest=${v#*.}; local minor=${rest%%.*}
  echo "-s -w -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z -X $pkg.gitCommit=0000000000000000000000000000000000000000 -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION"
}

if [ ! -x "$bin/kube-apiserver" ] || [ ! -x "$bin/kube-controller-manager" ]; then
  log "building kube-apiserver and kube-controller-manager $KUBE_VERSION (first time: ~10-20 min on 2 cores)"
  (cd "$here/go/kube" && go mod download && \
   go build -trimpath -ldflags "$(kube_ldflags)" -o "$bin/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver && \
   mv "$bin/kube-apiserver.tmp" "$bin/kube-apiserver" && log "kube-apiserver done" && \
   go build -trimpath -ldflags "$(kube_ldflags)" -o "$bin/kube-controller-manager.tmp" k8s.io/kubernetes/cmd/kube-controller-manager && \
   mv "$bin/kube-controller-manager.tmp" "$bin/kube-controller-manager" && log "kube-controller-manager done")
fi
if [ ! -x "$bin/etcd" ]; then
  log "building etcd $ETCD_VERSION"
  (cd "$here/go/etcd" && go build -trimpath -ldflags "-s -w" -o "$bin/etcd.tmp" go.etcd.io/etcd/server/v3 && mv "$bin/etcd.tmp" "$bin/etcd")
fi
if [ ! -x "$bin/helm" ] || [ ! -f "$bin/helm.kube-version" ]; then
  log "building helm $HELM_VERSION"
  # As helm's Makefile: the default .Capabilities.KubeVersion (helm template/lint) is client-go's
  # minor + 1.0 (without it, helm claims v1.20.0).
  helm_gomod=$(cd /tmp && go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  cg=$(awk '$1=="k8s.io/client-go"{print $2; exit}' "$helm_gomod"); cg=${cg#v}
  kmaj=$(( ${cg%%.*} + 1 )); kmin=$(echo "$cg" | cut -d. -f2)
  hl="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    hl="$hl -X $p.k8sVersionMajor=$kmaj -X $p.k8sVersionMinor=$kmin"
  done
  GOBIN="$bin" go install -trimpath -ldflags "$hl" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  echo "v$kmaj.$kmin.0" > "$bin/helm.kube-version"
fi
if [ ! -x "$bin/kubectl-krew" ] || [ ! -x "$bin/validate-krew-manifest" ]; then
  log "building krew $KREW_VERSION"
  GOBIN="$bin" go install -trimpath -ldflags "-s -w -X sigs.k8s.io/krew/internal/version.gitTag=$KREW_VERSION" \
    "sigs.k8s.io/krew/cmd/krew@$KREW_VERSION" "sigs.k8s.io/krew/cmd/validate-krew-manifest@$KREW_VERSION"
  mv -f "$bin/krew" "$bin/kubectl-krew"
fi
if [ "$("$bin/actionlint" -version 2>/dev/null | head -1)" != "$ACTIONLINT_VERSION" ]; then
  log "building actionlint $ACTIONLINT_VERSION"
  GOBIN="$bin" go install -trimpath -ldflags "-s -w -X main.version=$ACTIONLINT_VERSION" \
    "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
fi
prom_version() { "$bin/prometheus" --version 2>/dev/null | awk 'NR==1{print $3}'; }
if [ "$(prom_version)" != "${PROMETHEUS_VERSION#v}" ]; then
  # Debian's prometheus has no kubernetes_sd_configs; the lab (and the chart's Prometheus pod in
  # the lab) run upstream's. No web UI assets are embedded (API only): they are built with npm.
  log "building prometheus $PROMETHEUS_VERSION (first time: ~5-10 min on 2 cores)"
  pv=github.com/prometheus/common/version
  (cd "$here/go/prometheus" && go build -trimpath -tags netgo \
     -ldflags "-s -w -X $pv.Version=${PROMETHEUS_VERSION#v} -X $pv.Revision=upstream-module -X $pv.Branch=HEAD -X $pv.BuildUser=kubectl-mesh-lab -X $pv.BuildDate=19700101-00:00:00" \
     -o "$bin/prometheus.tmp" github.com/prometheus/prometheus/cmd/prometheus && mv "$bin/prometheus.tmp" "$bin/prometheus")
fi
log "binaries ready in $bin"
echo "$bin"
