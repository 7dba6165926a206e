#!/usr/bin/env bash
# Installs the Debian packages loquat builds against; does nothing when they are all present.
set -euo pipefail
pkgs=(build-essential pkg-config libopenblas-openmp-dev libhdf5-dev libcmocka-dev libyaml-dev libcjson-dev libpcre2-dev zlib1g-dev)
# EXTRA_PKGS="a b" adds packages a caller needs (valgrind for the memcheck run).
# shellcheck disable=SC2206
pkgs+=(${EXTRA_PKGS:-})
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "loquat deps: all present (${pkgs[*]})"
    exit 0
fi
echo "loquat deps: installing ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "loquat deps: need root (or sudo) to install ${missing[*]}" >&2; exit 1; }
    sudo=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "loquat deps: installed ${missing[*]}"
