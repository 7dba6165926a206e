#!/usr/bin/env bash
# Puts Fashion-MNIST (Debian's dataset-fashion-mnist: the four IDX files, gzip) into
# <cache>/data/fashion-mnist/ and prints that folder as the last line of stdout (progress goes
# to stderr):
#
#     fmnist=$(tools/fetch_fashion_mnist.sh | tail -1)
#
# Cache folder: $LOQUAT_CACHE (default ~/.cache/loquat). Files (links to the package's copies):
#   train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz
#   t10k-labels-idx1-ubyte.gz   (60000 / 10000 28x28 images, labels 0..9)
# The package is installed with apt-get when missing (needs root or sudo). Idempotent.
# Exit status 0 ok, 1 failure.
set -euo pipefail

say() { echo "fetch_fashion_mnist: $*" >&2; }
die() {
    say "error: $*"
    exit 1
}

pkg=dataset-fashion-mnist
cache="${LOQUAT_CACHE:-$HOME/.cache/loquat}"
out="$cache/data/fashion-mnist"
files=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)

have_all() {
    for f in "${files[@]}"; do [ -e "$out/$f.gz" ] || return 1; done
}

if have_all; then
    echo "$out"
    exit 0
fi

if ! dpkg -s "$pkg" >/dev/null 2>&1; then
    say "installing $pkg with apt-get"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get install -y -q "$pkg" >&2 || {
        $sudo apt-get update -q >&2 && $sudo apt-get install -y -q "$pkg" >&2
    } || die "apt-get install $pkg failed"
fi

mkdir -p "$out"
listing=$(dpkg -L "$pkg") || die "dpkg -L $pkg failed"
for f in "${files[@]}"; do
    src=$(printf '%s\n' "$listing" | grep -E "/$f(\.gz)?\$" | head -n 1 || true)
    [ -n "$src" ] && [ -f "$src" ] || die "$pkg has no $f file (dpkg -L lists no match)"
    case "$src" in
        *.gz) ln -sf "$src" "$out/$f.gz" ;;
        *) gzip -c "$src" >"$out/$f.gz.tmp" && mv "$out/$f.gz.tmp" "$out/$f.gz" ;;
    esac
    say "$f <- $src"
done
have_all || die "files missing in $out after copying"
echo "$out"
