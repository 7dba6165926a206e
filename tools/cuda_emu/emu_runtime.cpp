/* tools/cuda_emu/emu_runtime.cpp: the CPU emulator's kernel runner. A launch runs its blocks one
 * after another on the calling OS thread; a block's threads are cooperative fibers that
 * yield only at a barrier (__syncthreads, __syncwarp, a shuffle or a vote), so a kernel that never
 * syncs runs every thread of a block to completion on one fiber, one after another.
 *
 * A fiber starts the next not-yet-started thread of the block whenever the running one finishes;
 * a thread that waits keeps its fiber (its stack), and the scheduler hands the next unstarted
 * thread to an idle or new fiber. __syncthreads releases when every live thread of the block has
 * arrived (an exited thread counts as arrived, as on sm_70+; a thread not yet started is live);
 * warp barriers likewise over the 32 lanes (linear thread id / 32) of the caller's warp. When
 * nothing can run and threads are left, the kernel deadlocked: the emulator says which and aborts.
 * Emulates logic only: no timing, no real concurrency. Races show by comparison instead: under
 * LQ_CUDA_EMU_RACE=1 each launch runs twice in opposite block and thread orders (emu_race.cpp). */
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <queue>
#include <set>
#include <string>
#include <sys/mman.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>
#include <vector>

#include "emu_race.h"
#include "lq_cuda_emu.h"

uint3 lq_emu_thread_idx, lq_emu_block_idx;
dim3 lq_emu_block_dim, lq_emu_grid_dim;

void lq_emu_set_error(cudaError_t e); /* emu_api.cpp: the sticky-until-read launch error */

namespace {

/* 128 KiB a fiber: kernels keep fragments (a 16x16 fp32 matrix is 1 KiB) and small arrays there */
const size_t FIBER_STACK = 128 << 10;

/* --- switching fibers: on x86-64 a minimal switch of the callee-saved registers and the stack
 * pointer; swapcontext also saves and restores the signal mask, two system calls a switch, which
 * were most of the emulator's time in the reduction kernels. Elsewhere (or with
 * -DLQ_CUDA_EMU_UCONTEXT) ucontext. */
#if defined(__x86_64__) && !defined(LQ_CUDA_EMU_UCONTEXT)
struct fctx {
    void *sp;
};
} // namespace
/* saves rbp rbx r12-r15 on the current stack and its rsp in *save, then resumes the stack `to` */
extern "C" void lq_emu_switch(void **save, void *to);
asm(".pushsection .text\n"
    ".globl lq_emu_switch\n"
    ".type lq_emu_switch,@function\n"
    "lq_emu_switch:\n"
    "    pushq %rbp\n    pushq %rbx\n    pushq %r12\n    pushq %r13\n    pushq %r14\n    pushq %r15\n"
    "    movq %rsp, (%rdi)\n"
    "    movq %rsi, %rsp\n"
    "    popq %r15\n    popq %r14\n    popq %r13\n    popq %r12\n    popq %rbx\n    popq %rbp\n"
    "    ret\n"
    ".size lq_emu_switch,.-lq_emu_switch\n"
    ".popsection\n");
namespace {
/* a new stack that lq_emu_switch "returns" into fn: six zero registers, then fn's address at a
 * 16-byte boundary, so fn starts with rsp = 8 mod 16 as after a call; fn never returns */
void ctx_init(fctx *c, char *stack, size_t size, void (*fn)()) {
    uintptr_t top = ((uintptr_t)stack + size) & ~(uintptr_t)15;
    void **a = (void **)(top - 16);
    a[1] = nullptr; /* fn's return address: none */
    a[0] = (void *)fn;
    for (int i = 1; i <= 6; i++) a[-i] = nullptr;
    c->sp = (void *)(a - 6);
}
void ctx_swap(fctx *from, fctx *to) { lq_emu_switch(&from->sp, to->sp); }
#else
struct fctx {
    ucontext_t uc;
};
void ctx_init(fctx *c, char *stack, size_t size, void (*fn)()) {
    if (getcontext(&c->uc) != 0) abort();
    c->uc.uc_stack.ss_sp = stack;
    c->uc.uc_stack.ss_size = size;
    c->uc.uc_link = nullptr;
    makecontext(&c->uc, fn, 0);
}
void ctx_swap(fctx *from, fctx *to) { swapcontext(&from->uc, &to->uc); }
#endif

enum tstate : uint8_t { T_NEW, T_RUN, T_WAIT_BLOCK, T_WAIT_WARP, T_READY, T_DONE };

struct warp_rec {
    int live = 0, arrived = 0;
    unsigned phase = 0; /* barrier releases so far */
    std::vector<int> waiters;
    /* shuffle / vote slots, two sets used in alternate phases: a lane writes set phase & 1, meets
     * the warp, reads. It can write that set again only after the next meeting, which every lane
     * reaches after its read, so one meeting an exchange is enough. */
    uint64_t slot[2][32];
    unsigned pub[2][32]; /* the phase in which lane i's slot became readable */
};

struct fiber {
    fctx ctx;
    char *mem;
};

struct kstat {
    long launches = 0;
    long long threads = 0, switches = 0;
    double seconds = 0;
};

struct emu_state {
    /* the launch */
    const char *name = nullptr;
    void (*body)(void *) = nullptr;
    void *arg = nullptr;
    int n = 0; /* threads a block */
    unsigned char *dyn = nullptr; /* the launch's dynamic shared memory, 128-byte aligned as on a GPU */
    size_t dyn_n = 0;
    /* the block */
    int next = 0, live = 0, arrived = 0;
    const void *site = nullptr; /* the call site of this phase's first __syncthreads */
    std::vector<int> waiters;
    std::vector<uint8_t> state;
    std::vector<int> fib_of;
    std::vector<warp_rec> warps;
    /* released threads, the lowest id first (reverse order: the highest): the lowest warps run
     * ahead of the rest as far as the barriers allow, the skew that shows a missing barrier */
    std::priority_queue<int, std::vector<int>, std::greater<int>> ready;
    int cur = -1, cur_fiber = -1;
    bool in_kernel = false;
    long long switches = 0;
    /* the fibers, kept for the process's life */
    std::vector<fiber *> fibers;
    std::vector<int> idle;
    fctx sched;
    std::set<std::string> warned;
    std::map<std::string, kstat> stats;
    bool want_stats = false;
    bool reverse = false;         /* LQ_CUDA_EMU_ORDER=reverse: start a block's threads last to first */
    std::vector<void *> shared_seen; /* the __shared__ arrays this block has poisoned */
};

/* never destroyed: a static destructor at exit would drop the fibers while LeakSanitizer and late
 * atexit code may still look at them */
emu_state &S = *new emu_state;
std::mutex g_launch_mu;

void warn_once(const char *what, const char *detail) {
    std::string key = std::string(S.name) + ":" + what;
    if (!S.warned.insert(key).second) return;
    fprintf(stderr, "lq_cuda_emu: kernel %s: %s%s (block %u,%u,%u; reported once per kernel)\n", S.name, what, detail,
            lq_emu_block_idx.x, lq_emu_block_idx.y, lq_emu_block_idx.z);
}

[[noreturn]] void die(const char *fmt, const char *a) {
    fprintf(stderr, "lq_cuda_emu: ");
    fprintf(stderr, fmt, a);
    fprintf(stderr, "\n");
    fflush(stderr);
    abort();
}

void set_cur(int t) {
    S.cur = t;
    const unsigned bx = lq_emu_block_dim.x, by = lq_emu_block_dim.y;
    lq_emu_thread_idx.x = (unsigned)t % bx;
    lq_emu_thread_idx.y = ((unsigned)t / bx) % by;
    lq_emu_thread_idx.z = (unsigned)t / (bx * by);
}

void fiber_main();

int new_fiber() {
    fiber *f = new fiber;
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    void *m = mmap(nullptr, FIBER_STACK + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (m == MAP_FAILED) die("cannot map a fiber stack: %s", strerror(errno));
    if (mprotect(m, page, PROT_NONE) != 0) die("cannot protect a fiber's guard page: %s", strerror(errno));
    f->mem = (char *)m;
    ctx_init(&f->ctx, f->mem + page, FIBER_STACK, fiber_main); /* an overflow hits the guard page */
    S.fibers.push_back(f);
    return (int)S.fibers.size() - 1;
}

void switch_to(int f) {
    S.cur_fiber = f;
    S.switches++;
    ctx_swap(&S.sched, &S.fibers[f]->ctx);
}

/* the running thread gives the OS thread back to the scheduler until a barrier lets it go on */
void yield() {
    const int t = S.cur;
    ctx_swap(&S.fibers[S.fib_of[t]]->ctx, &S.sched);
}

void release_block() {
    for (int w : S.waiters) {
        S.state[w] = T_READY;
        S.ready.push(S.reverse ? -w : w);
    }
    S.waiters.clear();
    S.arrived = 0;
}

void release_warp(warp_rec &W) {
    for (int w : W.waiters) {
        S.state[w] = T_READY;
        S.ready.push(S.reverse ? -w : w);
    }
    W.waiters.clear();
    W.arrived = 0;
    W.phase++;
}

void thread_done(int t) {
    S.state[t] = T_DONE;
    S.live--;
    warp_rec &W = S.warps[t >> 5];
    W.live--;
    if (S.arrived > 0 && S.arrived == S.live) release_block();
    if (W.arrived > 0 && W.arrived == W.live) release_warp(W);
}

/* Each fiber takes the block's next unstarted thread until none is left, then idles. */
void fiber_main() {
    for (;;) {
        const int me = S.cur_fiber;
        while (S.next < S.n) {
            const int k = S.next++;
            const int t = S.reverse ? S.n - 1 - k : k;
            S.state[t] = T_RUN;
            S.fib_of[t] = me;
            set_cur(t);
            S.body(S.arg);
            thread_done(t);
        }
        S.idle.push_back(me);
        ctx_swap(&S.fibers[me]->ctx, &S.sched);
    }
}

[[noreturn]] void deadlock() {
    int wb = 0, ww = 0, first_b = -1, first_w = -1;
    for (int t = 0; t < S.n; t++) {
        if (S.state[t] == T_WAIT_BLOCK) wb++, first_b = first_b < 0 ? t : first_b;
        if (S.state[t] == T_WAIT_WARP) ww++, first_w = first_w < 0 ? t : first_w;
    }
    fprintf(stderr,
            "lq_cuda_emu: DEADLOCK in kernel %s, block (%u,%u,%u) of %d threads: %d live, %d wait at __syncthreads "
            "(first: thread %d), %d at a warp barrier (first: thread %d). A barrier some live threads never reach: "
            "a kernel bug (emulated on the CPU).\n",
            S.name, lq_emu_block_idx.x, lq_emu_block_idx.y, lq_emu_block_idx.z, S.n, S.live, wb, first_b, ww, first_w);
    fflush(stderr);
    abort();
}

void run_block() {
    S.next = 0;
    S.live = S.n;
    S.arrived = 0;
    S.waiters.clear();
    S.ready = decltype(S.ready)();
    S.shared_seen.clear();
    std::fill(S.state.begin(), S.state.end(), (uint8_t)T_NEW);
    for (size_t w = 0; w < S.warps.size(); w++) {
        warp_rec &W = S.warps[w];
        W.live = std::min(32, S.n - (int)w * 32);
        W.arrived = 0;
        W.waiters.clear();
        memset(W.pub, 0xff, sizeof W.pub); /* no lane has published in any phase */
        W.phase = 0;
    }
    /* dynamic shared memory starts as garbage on a GPU: NaN bytes here, so a read before a write shows */
    if (S.dyn_n) memset(S.dyn, 0xff, S.dyn_n);
    for (;;) {
        if (!S.ready.empty()) {
            const int t = S.reverse ? -S.ready.top() : S.ready.top();
            S.ready.pop();
            S.state[t] = T_RUN;
            set_cur(t);
            switch_to(S.fib_of[t]);
        } else if (S.next < S.n) {
            int f;
            if (S.idle.empty()) {
                f = new_fiber();
            } else {
                f = S.idle.back();
                S.idle.pop_back();
            }
            switch_to(f);
        } else if (S.live == 0) {
            return;
        } else {
            deadlock();
        }
    }
}

/* every block of the grid, in grid order (x fastest) or last to first; by_block: each block's writes
 * checked against the others' (the order check's first run) */
void run_grid(dim3 grid, bool backwards, bool by_block) {
    const unsigned long long nb = (unsigned long long)grid.x * grid.y * grid.z;
    for (unsigned long long k = 0; k < nb; k++) {
        const unsigned long long i = backwards ? nb - 1 - k : k;
        lq_emu_block_idx.x = (unsigned)(i % grid.x);
        lq_emu_block_idx.y = (unsigned)(i / grid.x % grid.y);
        lq_emu_block_idx.z = (unsigned)(i / grid.x / grid.y);
        if (by_block) lq_emu_race_block_begin((long long)i);
        run_block();
        if (by_block) lq_emu_race_block_end(S.name);
    }
}

void check_in_kernel(const char *what) {
    if (!S.in_kernel) die("%s called outside a kernel", what);
}

void check_mask(unsigned mask, const char *what) {
    if (mask != 0xffffffffu) die("%s with a mask other than 0xffffffff is not emulated", what);
}

warp_rec &warp_wait() {
    const int t = S.cur;
    warp_rec &W = S.warps[t >> 5];
    W.arrived++;
    if (W.arrived == W.live) {
        release_warp(W);
    } else {
        S.state[t] = T_WAIT_WARP;
        W.waiters.push_back(t);
        yield();
    }
    return W;
}

double now_s() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void print_stats() {
    fprintf(stderr, "lq_cuda_emu: per kernel: launches, threads, fiber switches, seconds\n");
    for (auto &kv : S.stats)
        fprintf(stderr, "  %-28s %8ld %12lld %10lld %8.3f\n", kv.first.c_str(), kv.second.launches, kv.second.threads,
                kv.second.switches, kv.second.seconds);
}

} // namespace

void __syncthreads(void) {
    check_in_kernel("__syncthreads");
    const void *site = __builtin_return_address(0);
    const int t = S.cur;
    if (S.arrived == 0) S.site = site;
    else if (site != S.site)
        warn_once("threads of one block met at different __syncthreads calls",
                  " (a __syncthreads under divergent control flow: undefined behaviour on a GPU)");
    S.arrived++;
    if (S.arrived == S.live) {
        release_block();
        return;
    }
    S.state[t] = T_WAIT_BLOCK;
    S.waiters.push_back(t);
    yield();
}

void lq_emu_syncwarp(unsigned mask) {
    check_in_kernel("__syncwarp");
    check_mask(mask, "__syncwarp");
    warp_wait();
}

void lq_emu_wmma_lanes(const char *what, int live) {
    check_in_kernel(what);
    if (live < 0) live = S.warps[S.cur >> 5].live;
    if (live >= 32) return;
    char d[96];
    snprintf(d, sizeof d, " (wmma::%s with %d of 32 lanes)", what, live);
    warn_once("a wmma call without the whole warp (lanes that returned, or a warp of under 32 threads): undefined "
              "on a GPU",
              d);
}

int lq_emu_lane(void) {
    check_in_kernel("a warp function");
    return S.cur & 31;
}

/* write, meet, read (see warp_rec's slots) */
uint64_t lq_emu_shfl(unsigned mask, uint64_t mine, int src) {
    check_in_kernel("__shfl_*_sync");
    check_mask(mask, "__shfl_*_sync");
    const int lane = S.cur & 31;
    warp_rec &W0 = S.warps[S.cur >> 5];
    const int set = W0.phase & 1;
    W0.slot[set][lane] = mine;
    W0.pub[set][lane] = W0.phase + 1;
    warp_rec &W = warp_wait();
    uint64_t r = mine;
    if (src >= 0 && src < 32 && W.pub[set][src] == W.phase) {
        r = W.slot[set][src];
    } else {
        char d[96];
        snprintf(d, sizeof d, " (lane %d read lane %d)", lane, src);
        warn_once("a shuffle read a lane that is not running (exited, or past the block's last thread): "
                  "undefined on a GPU; the emulator gives the reader its own value",
                  d);
    }
    return r;
}

unsigned lq_emu_ballot(unsigned mask, int pred) {
    check_in_kernel("a warp vote");
    check_mask(mask, "a warp vote");
    const int lane = S.cur & 31;
    warp_rec &W0 = S.warps[S.cur >> 5];
    const int set = W0.phase & 1;
    W0.slot[set][lane] = pred != 0;
    W0.pub[set][lane] = W0.phase + 1;
    warp_rec &W = warp_wait();
    unsigned r = 0;
    for (int i = 0; i < 32; i++)
        if (W.pub[set][i] == W.phase && W.slot[set][i]) r |= 1u << i;
    return r;
}

void lq_emu_shared_first(void *p, size_t bytes) {
    check_in_kernel("a __shared__ declaration");
    for (void *q : S.shared_seen)
        if (q == p) return;
    S.shared_seen.push_back(p);
    memset(p, 0xff, bytes);
}

void *lq_emu_dyn_shared(void) {
    check_in_kernel("extern __shared__");
    return S.dyn_n ? S.dyn : nullptr;
}

/* the kernels' opt-ins (cudaFuncSetAttribute): kernel -> bytes */
static std::mutex g_optin_mu;
static std::map<const void *, size_t> g_optin;

size_t lq_emu_max_dyn_shared(const void *fn) {
    std::lock_guard<std::mutex> lock(g_optin_mu);
    auto it = g_optin.find(fn);
    return it == g_optin.end() ? (size_t)48 << 10 : it->second;
}

void lq_emu_set_max_dyn_shared(const void *fn, size_t bytes) {
    std::lock_guard<std::mutex> lock(g_optin_mu);
    g_optin[fn] = bytes;
}

bool lq_emu_launch_ok(dim3 grid, dim3 block, size_t shmem, const void *fn) {
    const unsigned long long nt = (unsigned long long)block.x * block.y * block.z;
    if (!grid.x || !grid.y || !grid.z || !block.x || !block.y || !block.z || nt > 1024 || block.z > 64 ||
        grid.y > 65535 || grid.z > 65535 || grid.x > 0x7fffffffu) {
        lq_emu_set_error(cudaErrorInvalidConfiguration);
        return false;
    }
    if (shmem > 48 * 1024 && shmem > lq_emu_max_dyn_shared(fn)) { /* over 48 KiB and the kernel's opt-in */
        lq_emu_set_error(cudaErrorInvalidValue);
        return false;
    }
    return true;
}

void lq_emu_run(dim3 grid, dim3 block, size_t shmem, cudaStream_t stream, const char *name, void (*body)(void *),
                void *arg, const void *fn) {
    (void)stream; /* called in stream order (lq_emu_launch) */
    const unsigned long long nt = (unsigned long long)block.x * block.y * block.z;
    if (!lq_emu_launch_ok(grid, block, shmem, fn)) return;
    if (S.in_kernel) die("a launch of %s from inside a kernel (dynamic parallelism) is not emulated", name);
    std::lock_guard<std::mutex> lock(g_launch_mu);
    static bool init = false;
    if (!init) {
        init = true;
        const char *e = getenv("LQ_CUDA_EMU_STATS");
        S.want_stats = e && *e && *e != '0';
        if (S.want_stats) atexit(print_stats);
        const char *o = getenv("LQ_CUDA_EMU_ORDER");
        S.reverse = o && strcmp(o, "reverse") == 0;
        if (o && *o && !S.reverse && strcmp(o, "forward") != 0)
            die("LQ_CUDA_EMU_ORDER=%s: use forward or reverse", o);
    }
    const double t0 = S.want_stats ? now_s() : 0;
    const long long sw0 = S.switches;
    S.name = name;
    S.body = body;
    S.arg = arg;
    S.n = (int)nt;
    S.state.assign(S.n, T_NEW);
    S.fib_of.assign(S.n, -1);
    S.warps.assign((S.n + 31) / 32, warp_rec());
    free(S.dyn); /* exactly shmem bytes (ASan sees a read past the end), 128-byte aligned */
    S.dyn = nullptr;
    S.dyn_n = 0;
    if (shmem) {
        void *d = nullptr;
        if (posix_memalign(&d, 128, shmem) != 0) die("no host memory for the dynamic shared memory of %s", name);
        S.dyn = (unsigned char *)d;
        S.dyn_n = shmem;
    }
    lq_emu_block_dim = block;
    lq_emu_grid_dim = grid;
    S.in_kernel = true;
    if (lq_emu_race_on()) { /* the order check: once as configured, once the other way round */
        lq_emu_race_begin();
        run_grid(grid, false, true);
        lq_emu_race_between();
        S.reverse = !S.reverse;
        run_grid(grid, true, false);
        S.reverse = !S.reverse;
        lq_emu_race_end(name);
    } else {
        run_grid(grid, false, false);
    }
    S.in_kernel = false;
    S.cur = -1;
    if (S.want_stats) {
        kstat &k = S.stats[name];
        k.launches++;
        k.threads += (long long)nt * grid.x * grid.y * grid.z;
        k.switches += S.switches - sw0;
        k.seconds += now_s() - t0;
    }
}
