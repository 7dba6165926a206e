#!/usr/bin/env bash
# Exports Jane Austen's six novels, as Debian's r-cran-janeaustenr packages them (Project
# Gutenberg text, one line per element), into <cache>/data/austen/ and prints that folder as the
# last line of stdout (progress goes to stderr):
#
#     austen=$(tools/fetch_austen.sh | tail -1)
#
# Cache folder: $LOQUAT_CACHE (default ~/.cache/loquat). Files written (UTF-8, lines joined by "\n"):
#   sensesensibility.txt prideprejudice.txt mansfieldpark.txt emma.txt northangerabbey.txt
#   persuasion.txt    one per novel
#   austen_all.txt    the six in austen_books() order, separated by a blank line
#   persuasion_heldout.txt  the last 86,000 characters of Persuasion, from a line start (about
#                     20k SmolLM2 tokens): the held-out text for `loquat perplexity`
# R is not needed: the package's data/Rdata.rdb (a lazy-load database: zlib records of R's XDR
# serialization, indexed by the gzip'd data/Rdata.rdx) is decoded by a small reader below that
# knows the parts these character vectors use. The package comes from an installed copy in
# /usr/lib/R/site-library, else `apt-get download` (the .deb alone, unpacked with dpkg-deb -x);
# only if that fails is it installed with apt-get (which brings R). Needs python3 (stdlib only).
# Idempotent: with every file present nothing is done. Exit status 0 ok, 1 failure.
set -euo pipefail

say() { echo "fetch_austen: $*" >&2; }
die() {
    say "error: $*"
    exit 1
}

cache="${LOQUAT_CACHE:-$HOME/.cache/loquat}"
out="$cache/data/austen"
books=(sensesensibility prideprejudice mansfieldpark emma northangerabbey persuasion)
all=1
for b in "${books[@]}" austen_all persuasion_heldout; do [ -s "$out/$b.txt" ] || all=0; done
if [ "$all" = 1 ]; then
    say "already exported"
    echo "$out"
    exit 0
fi
command -v python3 >/dev/null || die "python3 is needed"
mkdir -p "$out"
tmp=$(mktemp -d "$cache/data/.austen.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

pkg=/usr/lib/R/site-library/janeaustenr
if [ ! -f "$pkg/data/Rdata.rdb" ]; then
    say "downloading r-cran-janeaustenr (.deb only)"
    if (cd "$tmp" && apt-get download r-cran-janeaustenr >&2 2>/dev/null) && ls "$tmp"/*.deb >/dev/null 2>&1; then
        dpkg-deb -x "$tmp"/*.deb "$tmp/x" || die "dpkg-deb -x failed"
        pkg="$tmp/x/usr/lib/R/site-library/janeaustenr"
    else
        say "apt-get download failed; installing r-cran-janeaustenr"
        apt-get install -y r-cran-janeaustenr >&2 || die "apt-get install r-cran-janeaustenr failed"
    fi
fi
[ -f "$pkg/data/Rdata.rdb" ] && [ -f "$pkg/data/Rdata.rdx" ] || die "$pkg/data/Rdata.rdb/.rdx not found"

python3 - "$pkg/data" "$tmp/out" <<'PY'
import gzip, os, struct, sys, zlib

class Vec(list):
    attrs = {}

class Reader:
    """R's XDR serialization (format 2 or 3): enough for lists, character vectors and names."""
    def __init__(self, b):
        self.b, self.i, self.refs = b, 0, []
        if b[:2] != b"X\n":
            raise ValueError("not an XDR serialization")
        self.i = 2
        ver = self.int(); self.int(); self.int()
        if ver == 3:
            n = self.int()  # native encoding name
            self.i += n
    def int(self):
        v = struct.unpack_from(">i", self.b, self.i)[0]; self.i += 4; return v
    def length(self):
        n = self.int()
        if n == -1:
            hi, lo = self.int(), self.int(); n = (hi << 32) + lo
        return n
    def item(self):
        f = self.int()
        t, attr, tag = f & 0xFF, f & (1 << 9), f & (1 << 10)
        if t in (254, 253, 252, 251, 250, 242, 241):
            return None
        if t == 255:
            k = f >> 8
            return self.refs[(k or self.int()) - 1]
        if t in (249, 248, 247):
            self.int(); v = [self.item() for _ in range(self.int())]; self.refs.append(v); return v
        if t == 1:
            v = self.item(); self.refs.append(v); return v
        if t == 4:
            env = {}; self.refs.append(env); self.int()
            for _ in range(4): self.item()
            return env
        if t in (2, 3, 5, 6, 17, 239, 240):
            if attr: self.item()
            tg = self.item() if tag else None
            car = self.item(); cdr = self.item()
            return [(tg, car)] + (cdr if isinstance(cdr, list) else [])
        if t == 9:
            n = self.int()
            if n == -1: return None
            s = self.b[self.i:self.i + n]; self.i += n
            return s.decode("utf-8", "replace")
        if t in (10, 13):
            n = self.length(); r = list(struct.unpack_from(">%di" % n, self.b, self.i)); self.i += 4 * n
        elif t == 14:
            n = self.length(); r = list(struct.unpack_from(">%dd" % n, self.b, self.i)); self.i += 8 * n
        elif t in (16, 19, 20):
            r = [self.item() for _ in range(self.length())]
        elif t == 24:
            n = self.length(); r = self.b[self.i:self.i + n]; self.i += n
        else:
            raise ValueError("R type %d is not handled" % t)
        if attr:
            a = self.item()
            if isinstance(r, list):
                r = Vec(r); r.attrs = dict(a) if isinstance(a, list) else {}
        return r

def record(rdb, off, ln, kind):
    rec = rdb[off:off + ln]
    n = struct.unpack(">I", rec[:4])[0]
    if kind == 1: body = zlib.decompress(rec[4:])
    elif kind == 2: import bz2; body = bz2.decompress(rec[5:])
    elif kind == 3: import lzma; body = lzma.decompress(rec[5:])
    else: body = rec[4:]
    if len(body) != n: raise ValueError("record length mismatch")
    return Reader(body).item()

src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst, exist_ok=True)
rdx = Reader(gzip.decompress(open(os.path.join(src, "Rdata.rdx"), "rb").read())).item()
kind = int(rdx[2][0]) if len(rdx) > 2 and rdx[2] else 1
rdb = open(os.path.join(src, "Rdata.rdb"), "rb").read()
books = ["sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion"]
index = dict(zip(rdx[0].attrs["names"], rdx[0]))
texts = {}
for b in books:
    off, ln = index[b]
    lines = record(rdb, int(off), int(ln), kind)
    texts[b] = "\n".join(x if x is not None else "" for x in lines) + "\n"
    open(os.path.join(dst, b + ".txt"), "w", encoding="utf-8").write(texts[b])
    print("fetch_austen: %s: %d lines, %d characters" % (b, len(lines), len(texts[b])), file=sys.stderr)
open(os.path.join(dst, "austen_all.txt"), "w", encoding="utf-8").write("\n".join(texts[b] for b in books))
p = texts["persuasion"]
start = p.find("\n", len(p) - 86000) + 1
open(os.path.join(dst, "persuasion_heldout.txt"), "w", encoding="utf-8").write(p[start:])
PY
for f in "$tmp"/out/*.txt; do mv -f "$f" "$out/"; done
say "exported to $out"
echo "$out"
