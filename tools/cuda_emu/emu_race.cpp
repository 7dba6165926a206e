/* tools/cuda_emu/emu_race.cpp: the emulator's order check (LQ_CUDA_EMU_RACE=1). Every launch runs
 * twice from the same device memory: first its blocks in grid order with the threads in the
 * configured order, then its blocks last to first with the threads in the opposite order. On a GPU
 * blocks and warps run in any order, so a kernel whose device memory comes out different from the
 * two runs has a race: two threads (or blocks) write one place, or one reads a place another writes
 * without a barrier between them. The check compares bytes, so a race whose effect lies inside a
 * suite's tolerance still shows. In the first run each block's writes are also compared with the
 * others': two blocks that change one byte race whatever their order (a sum by plain += across
 * blocks, overlapping tiles), even where both orders happen to give the same bits.
 *
 * How: in this mode device memory is whole pages (mmap), registered here. Before a launch every
 * device page is made read-only; the first store to a page faults, the handler saves the page's
 * bytes and makes it writable (in the first run, read-only again after each block, whose changes
 * are then found by comparing). After the first run the written pages' results are saved and their
 * bytes put back; after the second, each page either run wrote is compared. The second run's
 * memory stays. Bytes an atomic touched are left out (float atomics add in the order they arrive:
 * their bits differ by design). The report goes to stderr as an emulator finding, once per kernel. */
#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <sys/mman.h>
#include <unistd.h>
#include <vector>

#include "emu_race.h"

namespace {

struct region {
    uintptr_t base;
    size_t bytes, mapped; /* what cudaMalloc was asked for; whole pages */
};

struct race_state {
    int on = -1;
    size_t page = 4096;
    std::map<uintptr_t, region> regions; /* by base */
    bool tracking = false;
    /* a written page's bytes before the launch, the pages in first-written order over both runs */
    std::unordered_map<uintptr_t, size_t> saved_at;
    std::vector<uintptr_t> written;
    std::vector<unsigned char> saved;
    /* the first run's results of its written pages; its own list of them */
    std::unordered_map<uintptr_t, size_t> first_at;
    std::vector<unsigned char> first;
    std::unordered_set<uintptr_t> atomic_bytes;
    /* the first run, block by block: the running block (-1: not tracked), the pages it wrote and
     * their bytes before it; per page written in the launch, the block that changed each byte */
    long long block = -1;
    std::vector<uintptr_t> block_pages;
    std::unordered_map<uintptr_t, size_t> block_at;
    std::vector<unsigned char> block_before;
    std::unordered_map<uintptr_t, std::vector<long long>> writer;
    std::unordered_set<std::string> reported;
    struct sigaction old {};
};

race_state &R = *new race_state; /* never destroyed (see emu_runtime.cpp's state) */

[[noreturn]] void die(const char *what) {
    fprintf(stderr, "lq_cuda_emu: race check: %s: %s\n", what, strerror(errno));
    abort();
}

const region *region_of(uintptr_t a) {
    auto it = R.regions.upper_bound(a);
    if (it == R.regions.begin()) return nullptr;
    --it;
    return a < it->second.base + it->second.mapped ? &it->second : nullptr;
}

void protect_all(int prot) {
    for (auto &kv : R.regions)
        if (mprotect((void *)kv.second.base, kv.second.mapped, prot) != 0) die("mprotect of device memory");
}

/* the first store to a read-only device page during a run: keep its bytes, let the store through */
void on_segv(int sig, siginfo_t *si, void *uc) {
    const uintptr_t a = (uintptr_t)si->si_addr;
    if (R.tracking && region_of(a)) {
        const uintptr_t pg = a & ~(uintptr_t)(R.page - 1);
        if (!R.saved_at.count(pg)) {
            R.saved_at[pg] = R.saved.size();
            R.written.push_back(pg);
            R.saved.insert(R.saved.end(), (const unsigned char *)pg, (const unsigned char *)pg + R.page);
        }
        if (R.block >= 0 && !R.block_at.count(pg)) {
            R.block_at[pg] = R.block_before.size();
            R.block_pages.push_back(pg);
            R.block_before.insert(R.block_before.end(), (const unsigned char *)pg, (const unsigned char *)pg + R.page);
        }
        if (mprotect((void *)pg, R.page, PROT_READ | PROT_WRITE) == 0) return;
    }
    /* not a store the check made fault: device memory writable again, then the handler that was there
     * before, or the default */
    if (R.tracking) {
        char m[160];
        const int k = snprintf(m, sizeof m, "lq_cuda_emu: race check: a fault at %p during a launch, %s\n", si->si_addr,
                               region_of(a) ? "in device memory" : "outside device memory");
        if (k > 0) (void)!write(2, m, (size_t)k);
    }
    R.tracking = false;
    for (auto &kv : R.regions) mprotect((void *)kv.second.base, kv.second.mapped, PROT_READ | PROT_WRITE);
    sigaction(SIGSEGV, &R.old, nullptr);
    if ((R.old.sa_flags & SA_SIGINFO) && R.old.sa_sigaction) R.old.sa_sigaction(sig, si, uc);
    else if (R.old.sa_handler != SIG_DFL && R.old.sa_handler != SIG_IGN) R.old.sa_handler(sig);
    /* SIG_DFL: returning re-runs the access, which now kills the process as it would have */
}

/* ours during a launch only: a test framework (cmocka) installs its own between tests, and gets it back
 * after each launch */
void install_handler() {
    static thread_local void *alt = nullptr; /* the fault runs on a fiber's stack: the handler on its own */
    if (!alt) {
        stack_t ss{};
        ss.ss_size = 1 << 16;
        ss.ss_sp = alt = malloc(ss.ss_size); /* kept for the thread's life */
        if (!ss.ss_sp || sigaltstack(&ss, nullptr) != 0) die("sigaltstack");
    }
    struct sigaction sa {};
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGSEGV, &sa, &R.old) != 0) die("sigaction");
}

void restore_handler() {
    if (sigaction(SIGSEGV, &R.old, nullptr) != 0) die("sigaction");
}

void report_once(const char *name, const char *what) {
    if (!R.reported.insert(name).second) return;
    fprintf(stderr, "lq_cuda_emu: RACE in kernel %s: %s (reported once per kernel)\n", name, what);
}

/* the 4-byte word holding byte at, in its allocation */
const char *where(uintptr_t at, char *buf, size_t n) {
    const region *r = region_of(at);
    snprintf(buf, n, "the word at byte %zu of a %zu-byte allocation", r ? (size_t)(at - r->base) & ~(size_t)3 : 0,
             r ? r->bytes : (size_t)0);
    return buf;
}

float f32_at(const unsigned char *page, size_t off) {
    float v;
    memcpy(&v, page + (off & ~(size_t)3), 4);
    return v;
}

} // namespace

bool lq_emu_race_on(void) {
    if (R.on < 0) {
        const char *e = getenv("LQ_CUDA_EMU_RACE");
        R.on = e && *e && strcmp(e, "0") != 0;
        R.page = (size_t)sysconf(_SC_PAGESIZE);
    }
    return R.on != 0;
}

void lq_emu_race_force(bool on) {
    (void)lq_emu_race_on();
    R.on = on;
}

void *lq_emu_race_alloc(size_t bytes) {
    const size_t mapped = (bytes + R.page - 1) / R.page * R.page;
    void *m = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return nullptr;
    R.regions[(uintptr_t)m] = region{(uintptr_t)m, bytes, mapped};
    return m;
}

bool lq_emu_race_free(void *p) {
    auto it = R.regions.find((uintptr_t)p);
    if (it == R.regions.end()) return false;
    munmap(p, it->second.mapped);
    R.regions.erase(it);
    return true;
}

bool lq_emu_race_atomics = false;

void lq_emu_race_atomic(const void *p, size_t n) {
    for (size_t i = 0; i < n; i++) R.atomic_bytes.insert((uintptr_t)p + i);
}

void lq_emu_race_block_begin(long long block) {
    R.block = block;
}

/* the bytes this block changed: a byte another block changed too (not by an atomic) is a race
 * whatever the order; then its pages read-only again, for the next block */
void lq_emu_race_block_end(const char *name) {
    for (uintptr_t pg : R.block_pages) {
        const unsigned char *before = R.block_before.data() + R.block_at[pg], *now = (const unsigned char *)pg;
        if (memcmp(before, now, R.page)) {
            std::vector<long long> &wr = R.writer[pg];
            if (wr.empty()) wr.assign(R.page, -1);
            for (size_t i = 0; i < R.page; i++) {
                if (before[i] == now[i] || R.atomic_bytes.count(pg + i)) continue;
                if (wr[i] >= 0 && wr[i] != R.block) {
                    char w[96], m[256];
                    snprintf(m, sizeof m, "blocks %lld and %lld (linear ids) both wrote %s, not by an atomic",
                             wr[i], R.block, where(pg + i, w, sizeof w));
                    report_once(name, m);
                }
                wr[i] = R.block;
            }
        }
        if (mprotect((void *)pg, R.page, PROT_READ) != 0) die("mprotect of device memory");
    }
    R.block_pages.clear();
    R.block_at.clear();
    R.block_before.clear();
    R.block = -1;
}

void lq_emu_race_begin(void) {
    install_handler();
    R.written.clear();
    R.saved.clear();
    R.saved_at.clear();
    R.atomic_bytes.clear();
    R.writer.clear();
    lq_emu_race_atomics = true;
    protect_all(PROT_READ);
    R.tracking = true;
}

void lq_emu_race_between(void) {
    R.tracking = false;
    /* the first run's results kept, the pages it wrote put back as they were, read-only again */
    R.first.clear();
    R.first_at.clear();
    for (uintptr_t pg : R.written) {
        R.first_at[pg] = R.first.size();
        R.first.insert(R.first.end(), (const unsigned char *)pg, (const unsigned char *)pg + R.page);
        if (mprotect((void *)pg, R.page, PROT_READ | PROT_WRITE) != 0) die("mprotect of device memory");
        memcpy((void *)pg, R.saved.data() + R.saved_at[pg], R.page);
        if (mprotect((void *)pg, R.page, PROT_READ) != 0) die("mprotect of device memory");
    }
    R.tracking = true;
}

void lq_emu_race_end(const char *name) {
    R.tracking = false;
    lq_emu_race_atomics = false;
    protect_all(PROT_READ | PROT_WRITE);
    restore_handler();
    /* every page either run wrote (R.written: the first run's, then those only the second wrote):
     * the first run's bytes (the original where it did not write the page) against the memory as
     * the second run left it */
    size_t n_diff = 0;
    uintptr_t first_at = 0;
    float fa = 0, fb = 0;
    for (uintptr_t pg : R.written) {
        auto f = R.first_at.find(pg);
        const unsigned char *one = f != R.first_at.end() ? R.first.data() + f->second : R.saved.data() + R.saved_at[pg];
        const unsigned char *two = (const unsigned char *)pg;
        if (!memcmp(one, two, R.page)) continue;
        for (size_t i = 0; i < R.page; i++) {
            if (one[i] == two[i] || R.atomic_bytes.count(pg + i)) continue;
            if (!n_diff || pg + i < first_at) first_at = pg + i, fa = f32_at(one, i), fb = f32_at(two, i);
            n_diff++;
        }
    }
    if (n_diff) {
        char w[96], m[512];
        snprintf(m, sizeof m,
                 "its device memory differs between a run with the blocks in grid order and one with the blocks "
                 "and threads in the opposite order: %zu bytes, the first in %s (as f32: %g, then %g). Threads or "
                 "blocks write one place, or read what another writes without a barrier between",
                 n_diff, where(first_at, w, sizeof w), (double)fa, (double)fb);
        report_once(name, m);
    }
}
