#!/usr/bin/env python3
"""tools/cuda_emu/cu2cpp.py SRC.cu OUT.cpp: rewrites a CUDA source into host C++ for the CPU emulator.

Only two constructs change (everything else is left to lq_cuda_emu.h's macros):
  KERNEL<<<GRID, BLOCK[, SHMEM[, STREAM]]>>>(ARGS)
      -> lq_emu_launch(GRID, BLOCK, SHMEM, STREAM, "KERNEL", KERNEL, lq_emu_args<decltype(KERNEL)>(ARGS))
     The arguments are converted to the kernel's parameter types once, on the host, as CUDA does
     (so NULL and narrowing conversions behave as under nvcc); every emulated thread gets copies.
  extern __shared__ T name[];  ->  T *const name = (T *)lq_emu_dyn_shared();
Newlines are never added or removed, so compiler messages point at the .cu file's lines (a #line
directive at the top names the original file). A hand-written scanner tracks comments, string and
character literals and bracket depth; launches inside #define bodies (backslash continuations)
work because the text between the markers is copied as it is. A project header of device code
(#include "....cuh") is written into the source first, between #line directives, so its
__shared__ arrays get the same treatment.
"""
import re
import sys

IDENT = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")


def code_mask(src):
    """For each character: True when it is code (not inside a comment or a string/char literal)."""
    mask = [True] * len(src)
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = i
            while j < n and src[j] != "\n":
                # a backslash-newline continues a // comment onto the next line
                if src[j] == "\\" and j + 1 < n and src[j + 1] == "\n":
                    j += 1
                j += 1
            for k in range(i, j):
                mask[k] = False
            i = j
        elif src.startswith("/*", i):
            j = src.find("*/", i + 2)
            j = n if j < 0 else j + 2
            for k in range(i, j):
                mask[k] = False
            i = j
        elif c in "\"'":
            # a ' between digits is a C++14 digit separator, not a literal
            if c == "'" and i > 0 and src[i - 1].isalnum() and i + 1 < n and src[i + 1].isalnum():
                i += 1
                continue
            j = i + 1
            while j < n and src[j] != c:
                j += 2 if src[j] == "\\" else 1
            j = min(j + 1, n)
            for k in range(i, j):
                mask[k] = False
            i = j
        else:
            i += 1
    return mask


class Scanner:
    def __init__(self, src):
        self.src = src
        self.mask = code_mask(src)

    def die(self, pos, what):
        line = self.src.count("\n", 0, pos) + 1
        raise SystemExit(f"cu2cpp: line {line}: {what}")

    def match_close(self, pos):
        """pos at an opening ( [ {: the index of its closing bracket (code characters only)."""
        opening, closing = "([{", ")]}"
        depth = 0
        for i in range(pos, len(self.src)):
            if not self.mask[i]:
                continue
            c = self.src[i]
            if c in opening:
                depth += 1
            elif c in closing:
                depth -= 1
                if depth == 0:
                    return i
        self.die(pos, "unbalanced bracket")

    def kernel_start(self, pos):
        """pos at '<<<': the start of the kernel expression before it (an id, A::b, k<T, 4>)."""
        s = self.src
        i = pos
        while True:
            while i > 0 and s[i - 1] in " \t":
                i -= 1
            if i > 0 and s[i - 1] == ">":  # template arguments: walk back to the matching '<'
                depth, j = 0, i - 1
                while j >= 0:
                    if self.mask[j]:
                        if s[j] in ">)]":
                            depth += 1
                        elif s[j] in "<([":
                            depth -= 1
                            if depth == 0:
                                break
                    j -= 1
                if j < 0 or s[j] != "<":
                    self.die(pos, "cannot find the kernel's template arguments")
                i = j
                while i > 0 and s[i - 1] in " \t":
                    i -= 1
            j = i
            while j > 0 and (s[j - 1].isalnum() or s[j - 1] == "_"):
                j -= 1
            if j == i:
                self.die(pos, "no kernel name before <<<")
            i = j
            if i >= 2 and s[i - 2:i] == "::":  # a qualified name
                i -= 2
                continue
            return i

    def find_top(self, j, at):
        """The first index from j where at(i) holds outside brackets (code characters only), else
        len(src)."""
        depth = 0
        while j < len(self.src):
            if self.mask[j]:
                c = self.src[j]
                if c in "([{":
                    depth += 1
                elif c in ")]}":
                    depth -= 1
                elif depth == 0 and at(j):
                    return j
            j += 1
        return j

    def split_top(self, a, b):
        """Splits src[a:b] at commas outside brackets; returns the pieces' (start, end)."""
        parts, depth, start = [], 0, a
        for i in range(a, b):
            if not self.mask[i]:
                continue
            c = self.src[i]
            if c in "([{":
                depth += 1
            elif c in ")]}":
                depth -= 1
            elif c == "," and depth == 0:
                parts.append((start, i))
                start = i + 1
        parts.append((start, b))
        return parts


def macro_params(src, pos):
    """When pos lies in a #define body: the macro's parameter names (else an empty set)."""
    # walk back over continued lines to the logical line's start
    start = src.rfind("\n", 0, pos) + 1
    while start >= 2 and src[start - 2] == "\\":
        start = src.rfind("\n", 0, start - 1) + 1
    m = re.match(r"\s*#\s*define\s+[A-Za-z_]\w*\(([^)]*)\)", src[start:])
    if not m:
        return set()
    return {p.strip() for p in m.group(1).split(",") if p.strip()}


def transform(src):
    sc = Scanner(src)
    out, last, i = [], 0, 0
    while True:
        i = src.find("<<<", i)
        if i < 0:
            break
        if not sc.mask[i]:
            i += 3
            continue
        k0 = sc.kernel_start(i)
        kernel = src[k0:i].strip()
        # the launch configuration: up to the '>>>' at bracket depth 0
        j = sc.find_top(i + 3, lambda k: src.startswith(">>>", k))
        if j >= len(src):
            sc.die(i, "no >>> after <<<")
        cfg = sc.split_top(i + 3, j)
        if not 2 <= len(cfg) <= 4:
            sc.die(i, f"a launch takes 2 to 4 configuration values, not {len(cfg)}")
        p = j + 3
        while p < len(src) and src[p] in " \t\\\n":
            p += 1
        if p >= len(src) or src[p] != "(":
            sc.die(i, "no argument list after >>>")
        q = sc.match_close(p)
        cfg_txt = [src[a:b] for a, b in cfg] + [" 0"] * (4 - len(cfg))
        base = kernel.split("<")[0].strip()
        name = "#" + base if base in macro_params(src, i) else '"' + kernel.replace('"', "") + '"'
        out.append(src[last:k0])
        out.append("lq_emu_launch(" + ",".join(cfg_txt) + ", " + name + ", " + kernel)
        out.append(", lq_emu_args<decltype(" + kernel + ")>" + src[j + 3:q + 1] + ")")
        last = i = q + 1
    out.append(src[last:])
    res = "".join(out)
    return shared_static(shared_extern(res))


EXTERN_SHARED = re.compile(r"extern\s+__shared__\s+((?:__align__\s*\(\s*\d+\s*\)\s*)?)([^;\[]*?)\s*([A-Za-z_]\w*)\s*\[\s*\]\s*;")


def shared_extern(src):
    """extern __shared__ T name[]; -> a pointer to the launch's dynamic shared buffer."""
    mask = code_mask(src)

    def repl(m):
        if not mask[m.start()]:
            return m.group(0)
        # depth of braces before it: at file scope a pointer would be set once, not per launch
        depth = 0
        for k in range(m.start()):
            if mask[k]:
                depth += src[k] == "{"
                depth -= src[k] == "}"
        if depth == 0:
            return "\n" * m.group(0).count("\n") + '#error "cu2cpp: extern __shared__ at file scope is not emulated"\n'
        t = m.group(2).strip()
        return f"{t} *const {m.group(3)} = ({t} *)lq_emu_dyn_shared();" + "\n" * m.group(0).count("\n")

    return EXTERN_SHARED.sub(repl, src)


def brace_depths(src, mask):
    """The brace depth before each character (code characters only)."""
    depth, out = 0, [0] * (len(src) + 1)
    for k, c in enumerate(src):
        out[k] = depth
        if mask[k]:
            depth += c == "{"
            depth -= c == "}"
    return out


def shared_static(src):
    """__shared__ T a[N], b[M]; inside a function: keeps the declaration (lq_cuda_emu.h makes it static)
    and appends, on the same line, lq_emu_shared_first(&a, sizeof a); per name: the runtime fills an
    array with NaN bytes the first time any thread of a block reaches it, as uninitialized shared
    memory, so a read before a write shows instead of the previous block's values."""
    sc = Scanner(src)
    depths = brace_depths(src, sc.mask)
    out, last = [], 0
    for m in re.finditer(r"\b__shared__\b", src):
        i = m.start()
        if not sc.mask[i] or depths[i] == 0:
            continue
        j = sc.find_top(m.end(), lambda k: src[k] == ";")
        decl = re.sub(r"__align__\s*\([^)]*\)", " ", src[m.end():j])
        pieces = [decl[a:b] for a, b in Scanner(decl).split_top(0, len(decl))]
        names = []
        for k, piece in enumerate(pieces):
            head = re.split(r"[\[=]", piece)[0]
            ids = IDENT.findall(head)
            if not ids:
                sc.die(i, "cannot find the name in a __shared__ declaration")
            names.append(ids[-1] if k == 0 else ids[0])
        out.append(src[last:j + 1])
        out.append("".join(f" lq_emu_shared_first(&{n}, sizeof {n});" for n in names))
        last = j + 1
    out.append(src[last:])
    return "".join(out)


LOCAL_CUH = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+\.cuh)"[ \t]*$', re.M)


def inline_cuh(src, path, seen):
    """Each project header of device code (#include "x.cuh", from the repository root as -I. finds
    it) written into the source, once, between #line directives: the transform must see its
    kernels' __shared__ arrays and launches as it sees the .cu file's own."""
    out, last = [], 0
    for m in LOCAL_CUH.finditer(src):
        out.append(src[last:m.start()])
        hdr = m.group(1)
        line = src.count("\n", 0, m.end()) + 2  # the line after the #include
        if hdr not in seen:
            seen.add(hdr)
            with open(hdr, encoding="utf-8") as f:
                body = inline_cuh(f.read(), hdr, seen)
            out.append(f'#line 1 "{hdr}"\n{body}\n#line {line} "{path}"')
        last = m.end()
    out.append(src[last:])
    return "".join(out)


def main():
    if len(sys.argv) != 3:
        raise SystemExit("usage: cu2cpp.py SRC.cu OUT.cpp")
    path, dst = sys.argv[1], sys.argv[2]
    with open(path, encoding="utf-8") as f:
        src = inline_cuh(f.read(), path, set())
    res = '#line 1 "' + path + '"\n' + transform(src)
    with open(dst, "w", encoding="utf-8") as f:
        f.write(res)


if __name__ == "__main__":
    main()
