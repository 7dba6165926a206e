/* tools/cuda_emu/emu_api.cpp: the CUDA runtime and cuBLAS calls loquat makes, for the CPU emulator:
 * device memory is 256-byte aligned host memory; work on a blocking stream (and the legacy NULL
 * stream) is done when its call returns; work on a non-blocking stream (cudaStreamNonBlocking: a
 * side stream forked from another) is queued and runs as late as CUDA allows, when another stream
 * or the host waits for it (see "streams and events"); the GEMMs are a plain column-major reference
 * (fp32 accumulation, k ascending) that rounds its operands to tf32 / bf16 / fp16 as the compute
 * type says, so the suites' reduced precision bounds are exercised for real. Only the calls the
 * project makes (grep cuda* / cublas*). */
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <string>
#include <sys/sysinfo.h>
#include <time.h>
#include <utility>
#include <vector>

#include "emu_race.h"
#include "lq_cuda_emu.h"

/* A deferred stream's queue holds (sequence number, work); `waited` maps each stream it has waited
 * on to the tick of the latest event of that stream it waited for (the lint in lq_emu_enqueue). */
struct CUstream_st {
    unsigned flags;
    std::deque<std::pair<uint64_t, std::function<void()>>> q;
    uint64_t issued = 0;                       /* sequence number of the last work queued */
    uint64_t last_tick = 0;                    /* global tick of its last work (immediate streams) */
    std::map<const CUstream_st *, uint64_t> waited;
};
struct CUevent_st {
    double t;
    cudaStream_t s = nullptr;
    uint64_t seq = 0, tick = 0; /* the recording stream's work up to seq (deferred) / tick (immediate) */
};
struct cublasContext {
    cudaStream_t stream;
    cublasMath_t math;
};

namespace {
cudaError_t g_last = cudaSuccess;

cudaError_t fail(cudaError_t e) { /* a failing call also leaves its error for cudaGetLastError */
    g_last = e;
    return e;
}

double now_s() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* "device" memory: at most this much at once, so a huge request fails as cudaMalloc would */
const size_t DEVICE_BYTES = (size_t)80 << 30;

uint64_t g_tick = 0;                   /* work issued so far, all streams */
CUstream_st g_null_stream;             /* the legacy stream's record */
std::vector<CUstream_st *> g_deferred; /* the live non-blocking streams */

CUstream_st *rec(cudaStream_t s) { return s ? s : &g_null_stream; }

void flush(CUstream_st *s, uint64_t upto) { /* s's queued work through sequence number upto, in order */
    while (!s->q.empty() && s->q.front().first <= upto) {
        std::function<void()> f = std::move(s->q.front().second);
        s->q.pop_front();
        f();
    }
}

void flush_all() {
    for (CUstream_st *s : g_deferred) flush(s, UINT64_MAX);
}
} // namespace

void lq_emu_set_error(cudaError_t e) { g_last = e; }

/* LQ_CUDA_EMU_HOST_ONLY=1: the host side of a run alone. Kernels, GEMMs, memsets and device-to-device
 * copies are counted and not done; host <-> device copies are done; fresh device memory is zero
 * bytes (not NaN), so that a skipped computation reads as 0. Results are meaningless; what it
 * measures is the time the host spends issuing work (loquat's own code, without the driver's cost
 * per call), and what it counts is the calls per run, printed at exit. */
namespace {
struct host_counts {
    long long kernels, gemms, memsets, d2d, copies, events, syncs;
} g_hc;
std::map<std::string, long long> g_hc_names; /* with LQ_CUDA_EMU_STATS too: launches per kernel */
bool g_hc_by_name;

void print_host_counts() {
    fprintf(stderr,
            "lq_cuda_emu host-only: %lld kernel launches, %lld cuBLAS calls, %lld memsets, %lld device copies "
            "(all skipped); %lld host <-> device copies, %lld event records / waits, %lld synchronizes\n",
            g_hc.kernels, g_hc.gemms, g_hc.memsets, g_hc.d2d, g_hc.copies, g_hc.events, g_hc.syncs);
    for (const auto &kv : g_hc_names) fprintf(stderr, "  %-40s %10lld\n", kv.first.c_str(), kv.second);
}

bool host_only() {
    static int v = -1;
    if (v < 0) {
        const char *e = getenv("LQ_CUDA_EMU_HOST_ONLY");
        v = e && *e && strcmp(e, "0") != 0;
        const char *st = getenv("LQ_CUDA_EMU_STATS");
        g_hc_by_name = v && st && *st && strcmp(st, "0") != 0;
        if (v) atexit(print_host_counts);
    }
    return v != 0;
}

/* host-only mode: a device-to-device copy is counted and skipped (true); any other copy is
 * counted and done */
bool skip_copy(enum cudaMemcpyKind kind) {
    if (!host_only()) return false;
    if (kind == cudaMemcpyDeviceToDevice) {
        g_hc.d2d++;
        return true;
    }
    g_hc.copies++;
    return false;
}

/* true: the call's work is skipped (host-only mode), counted by its kind */
bool skip_work(const char *what) {
    if (!host_only() || !strncmp(what, "cudaMemcpy", 10)) return false;
    if (!strncmp(what, "cublas", 6)) g_hc.gemms++;
    else if (!strcmp(what, "cudaMemsetAsync")) g_hc.memsets++;
    else g_hc.kernels++;
    if (g_hc_by_name) g_hc_names[what]++;
    return true;
}
} // namespace

/* --- errors */
extern "C" cudaError_t cudaGetLastError(void) {
    cudaError_t e = g_last;
    g_last = cudaSuccess;
    return e;
}
extern "C" cudaError_t cudaPeekAtLastError(void) { return g_last; }

extern "C" const char *cudaGetErrorName(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    default: return "cudaErrorUnknown";
    }
}

extern "C" const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotSupported: return "operation not supported";
    default: return "unrecognized error code (CPU emulator)";
    }
}

/* --- the device */
extern "C" cudaError_t cudaGetDeviceCount(int *count) {
    if (!count) return fail(cudaErrorInvalidValue);
    *count = 1;
    return cudaSuccess;
}

extern "C" cudaError_t cudaGetDevice(int *dev) {
    if (!dev) return fail(cudaErrorInvalidValue);
    *dev = 0;
    return cudaSuccess;
}

extern "C" cudaError_t cudaSetDevice(int dev) { return dev == 0 ? cudaSuccess : fail(cudaErrorInvalidDevice); }

extern "C" cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *p, int dev) {
    if (!p) return fail(cudaErrorInvalidValue);
    if (dev != 0) return fail(cudaErrorInvalidDevice);
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "loquat CPU emulator");
    p->totalGlobalMem = DEVICE_BYTES;
    p->sharedMemPerBlock = 48 << 10;
    p->regsPerBlock = 65536;
    p->warpSize = 32;
    p->maxThreadsPerBlock = 1024;
    p->maxThreadsDim[0] = p->maxThreadsDim[1] = 1024;
    p->maxThreadsDim[2] = 64;
    p->maxGridSize[0] = 0x7fffffff;
    p->maxGridSize[1] = p->maxGridSize[2] = 65535;
    p->major = 9;
    p->minor = 0;
    p->multiProcessorCount = 132;
    p->maxThreadsPerMultiProcessor = 2048;
    p->sharedMemPerMultiprocessor = 228 << 10;
    p->l2CacheSize = 50 << 20;
    return cudaSuccess;
}

extern "C" cudaError_t cudaDeviceGetAttribute(int *v, enum cudaDeviceAttr a, int dev) {
    if (!v) return fail(cudaErrorInvalidValue);
    if (dev != 0) return fail(cudaErrorInvalidDevice);
    switch (a) {
    case cudaDevAttrMultiProcessorCount: *v = 132; break;
    case cudaDevAttrMaxThreadsPerBlock: *v = 1024; break;
    case cudaDevAttrWarpSize: *v = 32; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *v = 48 << 10; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = LQ_EMU_SHARED_OPTIN; break;
    case cudaDevAttrComputeCapabilityMajor: *v = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *v = 0; break;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *v = 2048; break;
    default: return fail(cudaErrorInvalidValue); /* not emulated: say so rather than invent a value */
    }
    return cudaSuccess;
}

/* Only the dynamic shared memory opt-in is emulated (checked at each launch of func, as on a GPU). */
extern "C" cudaError_t cudaFuncSetAttribute(const void *func, enum cudaFuncAttribute attr, int value) {
    if (!func || attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 || value > LQ_EMU_SHARED_OPTIN)
        return fail(cudaErrorInvalidValue);
    lq_emu_set_max_dyn_shared(func, (size_t)value);
    return cudaSuccess;
}

extern "C" cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int *n, const void *func, int block, size_t shm) {
    if (!n || !func || block <= 0 || block > 1024) return fail(cudaErrorInvalidValue);
    int b = 2048 / block;
    if (shm) b = std::min<int>(b, (int)((228u << 10) / shm));
    *n = std::max(0, std::min(b, 32));
    return cudaSuccess;
}

extern "C" cudaError_t cudaDeviceSynchronize(void) {
    if (host_only()) g_hc.syncs++;
    flush_all();
    return cudaSuccess;
}

/* --- memory: host memory; fresh device memory is NaN bytes (0xff), as garbage to be overwritten */
extern "C" cudaError_t cudaMalloc(void **p, size_t bytes) {
    if (!p) return fail(cudaErrorInvalidValue);
    *p = nullptr;
    if (!bytes) return cudaSuccess;
    if (bytes > DEVICE_BYTES) return fail(cudaErrorMemoryAllocation);
    /* exactly `bytes` (no rounding up to the alignment): under ASan or valgrind a read one past
     * the end is reported; under the order check whole pages (emu_race.cpp) */
    void *m = nullptr;
    if (lq_emu_race_on() ? !(m = lq_emu_race_alloc(bytes)) : posix_memalign(&m, 256, bytes) != 0)
        return fail(cudaErrorMemoryAllocation);
    memset(m, host_only() ? 0 : 0xff, bytes);
    *p = m;
    return cudaSuccess;
}

extern "C" cudaError_t cudaFree(void *p) {
    flush_all(); /* cudaFree waits for the device */
    if (!lq_emu_race_free(p)) free(p);
    return cudaSuccess;
}

extern "C" cudaError_t cudaHostAlloc(void **p, size_t bytes, unsigned int flags) {
    (void)flags;
    if (!p) return fail(cudaErrorInvalidValue);
    *p = nullptr;
    if (!bytes) return cudaSuccess;
    return posix_memalign(p, 256, bytes) == 0 ? cudaSuccess : fail(cudaErrorMemoryAllocation);
}

extern "C" cudaError_t cudaFreeHost(void *p) {
    flush_all();
    free(p);
    return cudaSuccess;
}

extern "C" cudaError_t cudaMemGetInfo(size_t *freeb, size_t *total) {
    if (!freeb || !total) return fail(cudaErrorInvalidValue);
    struct sysinfo si;
    size_t avail = DEVICE_BYTES;
    if (sysinfo(&si) == 0) avail = std::min(avail, (size_t)si.freeram * si.mem_unit);
    *freeb = avail;
    *total = DEVICE_BYTES;
    return cudaSuccess;
}

extern "C" cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind,
                                       cudaStream_t s) {
    if ((unsigned)kind > (unsigned)cudaMemcpyDefault) return fail(cudaErrorInvalidValue);
    if (!n) return cudaSuccess;
    if (!dst || !src) return fail(cudaErrorInvalidValue);
    if (skip_copy(kind)) return cudaSuccess;
    lq_emu_enqueue(s, "cudaMemcpyAsync", [=]() { memmove(dst, src, n); });
    return cudaSuccess;
}

extern "C" cudaError_t cudaMemcpy2DAsync(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width,
                                         size_t height, enum cudaMemcpyKind kind, cudaStream_t s) {
    if ((unsigned)kind > (unsigned)cudaMemcpyDefault || width > dpitch || width > spitch)
        return fail(cudaErrorInvalidValue);
    if (!width || !height) return cudaSuccess;
    if (!dst || !src) return fail(cudaErrorInvalidValue);
    if (skip_copy(kind)) return cudaSuccess;
    lq_emu_enqueue(s, "cudaMemcpy2DAsync", [=]() {
        for (size_t i = 0; i < height; i++) memmove((char *)dst + i * dpitch, (const char *)src + i * spitch, width);
    });
    return cudaSuccess;
}

extern "C" cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind) {
    return cudaMemcpyAsync(dst, src, n, kind, nullptr);
}

extern "C" cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t s) {
    if (!n) return cudaSuccess;
    if (!p) return fail(cudaErrorInvalidValue);
    lq_emu_enqueue(s, "cudaMemsetAsync", [=]() { memset(p, v, n); });
    return cudaSuccess;
}

extern "C" cudaError_t cudaMemset(void *p, int v, size_t n) { return cudaMemsetAsync(p, v, n, nullptr); }

/* --- streams and events. Work on an immediate stream (the NULL stream, a blocking stream) runs in
 * the call that issues it. Work on a non-blocking stream is queued and runs only when something
 * must see it: a cudaStreamWaitEvent on an event recorded on that stream, a synchronize, a free, or
 * the stream's destruction. A consumer that forgets to wait then reads stale memory, and work that
 * reads memory its forking stream rewrites before the join reads the new contents; either shows as
 * a wrong result. The lint: a non-blocking stream must have waited, since the last work of each
 * stream it has ever waited on, for that work (queue it right after the fork); otherwise the call
 * aborts with the work's name. */

bool lq_emu_defers(cudaStream_t s) { return s && (s->flags & cudaStreamNonBlocking); }

void lq_emu_enqueue(cudaStream_t s, const char *what, std::function<void()> work) {
    if (skip_work(what)) return;
    CUstream_st *r = rec(s);
    ++g_tick;
    if (!lq_emu_defers(s)) {
        r->last_tick = g_tick;
        work();
        return;
    }
    bool covered = !r->waited.empty();
    for (const auto &w : r->waited) covered = covered && w.first->last_tick <= w.second;
    if (!covered) {
        fprintf(stderr,
                "cuda emulator: %s queued on a non-blocking stream that has not waited (cudaStreamWaitEvent) "
                "for the latest work of the stream it was forked from\n",
                what);
        abort();
    }
    r->q.emplace_back(++r->issued, std::move(work));
}

extern "C" cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned int flags) {
    if (!s) return fail(cudaErrorInvalidValue);
    *s = new CUstream_st;
    (*s)->flags = flags;
    if (flags & cudaStreamNonBlocking) g_deferred.push_back(*s);
    return cudaSuccess;
}

extern "C" cudaError_t cudaStreamDestroy(cudaStream_t s) {
    if (!s) return fail(cudaErrorInvalidResourceHandle);
    flush(s, UINT64_MAX); /* CUDA finishes a destroyed stream's work */
    g_deferred.erase(std::remove(g_deferred.begin(), g_deferred.end(), s), g_deferred.end());
    for (CUstream_st *d : g_deferred) d->waited.erase(s);
    delete s;
    return cudaSuccess;
}

extern "C" cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    if (host_only()) g_hc.syncs++;
    if (lq_emu_defers(s)) flush(s, UINT64_MAX);
    return cudaSuccess;
}

extern "C" cudaError_t cudaEventCreate(cudaEvent_t *e) {
    if (!e) return fail(cudaErrorInvalidValue);
    *e = new CUevent_st;
    (*e)->t = 0;
    return cudaSuccess;
}

extern "C" cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned int flags) {
    (void)flags;
    return cudaEventCreate(e);
}

extern "C" cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
    if (!e) return fail(cudaErrorInvalidResourceHandle);
    if (host_only()) g_hc.events++;
    e->t = now_s();
    e->s = s;
    e->seq = lq_emu_defers(s) ? s->issued : 0;
    e->tick = rec(s)->last_tick;
    return cudaSuccess;
}

/* A host function in stream order: the stream's deferred work first, then fn, on the calling thread. */
extern "C" cudaError_t cudaLaunchHostFunc(cudaStream_t s, cudaHostFn_t fn, void *data) {
    if (!fn) return fail(cudaErrorInvalidValue);
    if (lq_emu_defers(s)) flush(s, UINT64_MAX);
    fn(data);
    return cudaSuccess;
}

extern "C" cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned int flags) {
    (void)flags;
    if (!e) return fail(cudaErrorInvalidResourceHandle);
    if (host_only()) g_hc.events++;
    if (lq_emu_defers(e->s)) flush(e->s, e->seq);
    if (lq_emu_defers(s)) {
        uint64_t &w = s->waited[rec(e->s)];
        w = std::max(w, e->tick);
    }
    return cudaSuccess;
}

extern "C" cudaError_t cudaEventSynchronize(cudaEvent_t e) {
    if (!e) return fail(cudaErrorInvalidResourceHandle);
    if (lq_emu_defers(e->s)) flush(e->s, e->seq);
    return cudaSuccess;
}

/* host wall time between the records: the emulator's time, meaningless as a GPU figure */
extern "C" cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
    if (!ms) return fail(cudaErrorInvalidValue);
    if (!a || !b) return fail(cudaErrorInvalidResourceHandle);
    *ms = (float)((b->t - a->t) * 1e3);
    return cudaSuccess;
}

extern "C" cudaError_t cudaEventDestroy(cudaEvent_t e) {
    delete e;
    return cudaSuccess;
}

/* --- cuBLAS */
extern "C" cublasStatus_t cublasCreate(cublasHandle_t *h) {
    if (!h) return CUBLAS_STATUS_INVALID_VALUE;
    *h = new cublasContext{nullptr, CUBLAS_DEFAULT_MATH};
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasDestroy(cublasHandle_t h) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    h->stream = s;
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t m) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    h->math = m;
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" const char *cublasGetStatusName(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "CUBLAS_STATUS_UNKNOWN";
    }
}

extern "C" const char *cublasGetStatusString(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    default: return "unknown cuBLAS status (CPU emulator)";
    }
}

namespace {

/* round to nearest even, keeping `keep` of fp32's 23 mantissa bits (tf32: 10, bf16: 7); inf/NaN kept */
float round_mantissa(float f, int keep) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7f800000u) == 0x7f800000u) return f;
    const int drop = 23 - keep;
    const uint32_t half = 1u << (drop - 1), lsb = (u >> drop) & 1u;
    u = (u + half - 1 + lsb) & ~((1u << drop) - 1);
    memcpy(&f, &u, 4);
    return f;
}

float load(const void *p, cudaDataType t, size_t i) {
    switch (t) {
    case CUDA_R_32F: return ((const float *)p)[i];
    case CUDA_R_16BF: return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    default: return __half2float(((const __half *)p)[i]); /* CUDA_R_16F (checked) */
    }
}

void store(void *p, cudaDataType t, size_t i, float v) {
    switch (t) {
    case CUDA_R_32F: ((float *)p)[i] = v; break;
    case CUDA_R_16BF: ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(v); break;
    default: ((__half *)p)[i] = __float2half_rn(v); break;
    }
}

/* what the compute type does to an operand before the multiply */
float operand(float v, cublasComputeType_t ct) {
    switch (ct) {
    case CUBLAS_COMPUTE_32F_FAST_TF32: return round_mantissa(v, 10);
    case CUBLAS_COMPUTE_32F_FAST_16BF: return __bfloat162float(__float2bfloat16_rn(v));
    case CUBLAS_COMPUTE_32F_FAST_16F: return __half2float(__float2half_rn(v));
    default: return v;
    }
}

bool type_ok(cudaDataType t) { return t == CUDA_R_32F || t == CUDA_R_16BF || t == CUDA_R_16F; }

/* cuBLAS's argument checks for op(A) (m x k), op(B) (k x n), C (m x n), all column-major */
cublasStatus_t check(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, int lda,
                     int ldb, int ldc, cudaDataType at, cudaDataType bt, cudaDataType ct, cublasComputeType_t cmp,
                     int batch) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    if ((ta != CUBLAS_OP_N && ta != CUBLAS_OP_T) || (tb != CUBLAS_OP_N && tb != CUBLAS_OP_T))
        return CUBLAS_STATUS_INVALID_VALUE; /* CUBLAS_OP_C / _CONJG: not for real types here */
    if (m < 0 || n < 0 || k < 0 || batch < 0) return CUBLAS_STATUS_INVALID_VALUE;
    if (lda < std::max(1, ta == CUBLAS_OP_N ? m : k) || ldb < std::max(1, tb == CUBLAS_OP_N ? k : n) ||
        ldc < std::max(1, m))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (!type_ok(at) || at != bt || !type_ok(ct)) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (at == CUDA_R_32F && ct != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
    switch (cmp) {
    case CUBLAS_COMPUTE_32F:
    case CUBLAS_COMPUTE_32F_PEDANTIC:
    case CUBLAS_COMPUTE_32F_FAST_TF32:
    case CUBLAS_COMPUTE_32F_FAST_16BF:
    case CUBLAS_COMPUTE_32F_FAST_16F: break;
    default: return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    return CUBLAS_STATUS_SUCCESS;
}

/* C = alpha op(A) op(B) + beta C for one matrix; beta == 0 never reads C (it may hold NaN) */
void gemm1(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha, const void *A,
           cudaDataType at, int lda, const void *B, int ldb, float beta, void *C, cudaDataType ct, int ldc,
           cublasComputeType_t cmp) {
    if (!m || !n) return;
    /* op(A) packed row-major (m x k) and op(B) column by column (n x k): each dot product reads
     * contiguous memory; operands rounded once here */
    std::vector<float> a((size_t)m * k), b((size_t)n * k);
    for (int i = 0; i < m; i++)
        for (int l = 0; l < k; l++)
            a[(size_t)i * k + l] = operand(load(A, at, ta == CUBLAS_OP_N ? i + (size_t)l * lda : l + (size_t)i * lda), cmp);
    for (int j = 0; j < n; j++)
        for (int l = 0; l < k; l++)
            b[(size_t)j * k + l] = operand(load(B, at, tb == CUBLAS_OP_N ? l + (size_t)j * ldb : j + (size_t)l * ldb), cmp);
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            const float *pa = &a[(size_t)i * k], *pb = &b[(size_t)j * k];
            float s = 0.0f;
            for (int l = 0; l < k; l++) s += pa[l] * pb[l];
            const size_t ci = i + (size_t)j * ldc;
            float v = alpha * s;
            if (beta != 0.0f) v += beta * load(C, ct, ci);
            store(C, ct, ci, v);
        }
}

size_t elem_size(cudaDataType t) { return t == CUDA_R_32F ? 4 : 2; }

} // namespace

extern "C" cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                       int k, const void *alpha, const void *A, cudaDataType at, int lda,
                                       const void *B, cudaDataType bt, int ldb, const void *beta, void *C,
                                       cudaDataType ct, int ldc, cublasComputeType_t cmp, cublasGemmAlgo_t algo) {
    (void)algo;
    cublasStatus_t s = check(h, ta, tb, m, n, k, lda, ldb, ldc, at, bt, ct, cmp, 1);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    if (!alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
    const float al = *(const float *)alpha, be = *(const float *)beta; /* host scalars: read now */
    lq_emu_enqueue(h->stream, "cublasGemmEx",
                   [=]() { gemm1(ta, tb, m, n, k, al, A, at, lda, B, ldb, be, C, ct, ldc, cmp); });
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb,
                                                     int m, int n, int k, const void *alpha, const void *A,
                                                     cudaDataType at, int lda, long long sa, const void *B,
                                                     cudaDataType bt, int ldb, long long sb, const void *beta, void *C,
                                                     cudaDataType ct, int ldc, long long sc, int batch,
                                                     cublasComputeType_t cmp, cublasGemmAlgo_t algo) {
    (void)algo;
    cublasStatus_t s = check(h, ta, tb, m, n, k, lda, ldb, ldc, at, bt, ct, cmp, batch);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    if (!alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
    const size_t ea = elem_size(at), ec = elem_size(ct);
    const float al = *(const float *)alpha, be = *(const float *)beta;
    lq_emu_enqueue(h->stream, "cublasGemmStridedBatchedEx", [=]() {
        for (int i = 0; i < batch; i++)
            gemm1(ta, tb, m, n, k, al, (const char *)A + (ptrdiff_t)(sa * i) * (ptrdiff_t)ea, at, lda,
                  (const char *)B + (ptrdiff_t)(sb * i) * (ptrdiff_t)ea, ldb, be,
                  (char *)C + (ptrdiff_t)(sc * i) * (ptrdiff_t)ec, ct, ldc, cmp);
    });
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasGemmBatchedEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                                              int n, int k, const void *alpha, const void *const Aarray[],
                                              cudaDataType at, int lda, const void *const Barray[], cudaDataType bt,
                                              int ldb, const void *beta, void *const Carray[], cudaDataType ct,
                                              int ldc, int batch, cublasComputeType_t cmp, cublasGemmAlgo_t algo) {
    (void)algo;
    cublasStatus_t s = check(h, ta, tb, m, n, k, lda, ldb, ldc, at, bt, ct, cmp, batch);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    if (!alpha || !beta || (batch && (!Aarray || !Barray || !Carray))) return CUBLAS_STATUS_INVALID_VALUE;
    const float al = *(const float *)alpha, be = *(const float *)beta;
    lq_emu_enqueue(h->stream, "cublasGemmBatchedEx", [=]() { /* the pointer arrays are device data: read then */
        for (int i = 0; i < batch; i++)
            gemm1(ta, tb, m, n, k, al, Aarray[i], at, lda, Barray[i], ldb, be, Carray[i], ct, ldc, cmp);
    });
    return CUBLAS_STATUS_SUCCESS;
}
