/* tools/cuda_emu/lq_cuda_emu.h: force-included (-include) before every .cu file that cu2cpp.py turned
 * into host C++: the CUDA language made plain C++ for the CPU emulator (emu_runtime.cpp). Kernels
 * run as cooperative fibers, one block at a time on the calling OS thread, so __shared__ is a
 * function-static array, atomics are plain read-modify-writes and the intrinsics are exact IEEE
 * single-precision operations (build with -ffp-contract=off so none is fused into an FMA).
 * Emulates kernel LOGIC (indices, bounds, barriers, reductions), never timing or real races. */
#ifndef LQ_CUDA_EMU_H
#define LQ_CUDA_EMU_H

#define LQ_CUDA_EMU 1

#ifdef __cplusplus

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

/* --- the language's qualifiers: the real headers make them annotations a host compiler ignores;
 * here each is empty, except __shared__: blocks run one after another, so a function-static array
 * is exactly one block's shared memory */
#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __constant__
#undef __managed__
#undef __noinline__
#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __constant__
#define __managed__
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#ifndef __forceinline__
#define __forceinline__ inline __attribute__((always_inline))
#endif

/* --- the built-in variables: the runtime sets these before it resumes an emulated thread */
extern uint3 lq_emu_thread_idx, lq_emu_block_idx;
extern dim3 lq_emu_block_dim, lq_emu_grid_dim;
#define threadIdx lq_emu_thread_idx
#define blockIdx lq_emu_block_idx
#define blockDim lq_emu_block_dim
#define gridDim lq_emu_grid_dim
/* a variable, not a macro: cudaDeviceProp has a member of the same name */
static constexpr int warpSize = 32;

/* --- barriers and warp exchange (emu_runtime.cpp) */
void __syncthreads(void);
void lq_emu_syncwarp(unsigned mask);
static inline void __syncwarp(unsigned mask = 0xffffffffu) { lq_emu_syncwarp(mask); }
/* Every live lane of the caller's warp publishes `mine` and meets the others once; returns lane
 * src's value. A src lane that is not running (exited, or past a partial warp's end) gives a
 * warning and the caller's own value. */
uint64_t lq_emu_shfl(unsigned mask, uint64_t mine, int src);
/* Every live lane publishes `pred`; returns the bit mask of lanes whose pred was non-zero. */
unsigned lq_emu_ballot(unsigned mask, int pred);
int lq_emu_lane(void);
/* A wmma call (include/mma.h): CUDA's warp matrix functions need all 32 lanes of the warp; a warning
 * when fewer are live (live < 0: the caller's warp's count now; else the count the call found). */
void lq_emu_wmma_lanes(const char *what, int live);

template <typename T> static inline T lq_emu_shfl_t(unsigned mask, T v, int src) {
    static_assert(sizeof(T) <= sizeof(uint64_t), "shuffles of values over 8 bytes are not emulated");
    uint64_t u = 0;
    memcpy(&u, &v, sizeof v);
    u = lq_emu_shfl(mask, u, src);
    T r;
    memcpy(&r, &u, sizeof r);
    return r;
}
/* CUDA's rules: the source lane is taken within the caller's `width`-lane segment; a shift past the
 * segment's edge (xor, down, up) returns the caller's own value. */
template <typename T> static inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    const int lane = lq_emu_lane(), base = lane & ~(width - 1);
    return lq_emu_shfl_t(mask, v, base + (src & (width - 1)));
}
template <typename T> static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    const int lane = lq_emu_lane(), src = lane ^ lane_mask;
    return lq_emu_shfl_t(mask, v, (src & ~(width - 1)) == (lane & ~(width - 1)) ? src : lane);
}
template <typename T> static inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    const int lane = lq_emu_lane();
    return lq_emu_shfl_t(mask, v, (lane & (width - 1)) + (int)delta < width ? lane + (int)delta : lane);
}
template <typename T> static inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    const int lane = lq_emu_lane();
    return lq_emu_shfl_t(mask, v, (lane & (width - 1)) >= (int)delta ? lane - (int)delta : lane);
}
static inline unsigned __ballot_sync(unsigned mask, int pred) { return lq_emu_ballot(mask, pred); }
static inline int __any_sync(unsigned mask, int pred) { return lq_emu_ballot(mask, pred) != 0; }
static inline int __all_sync(unsigned mask, int pred) { return lq_emu_ballot(mask, !pred) == 0; }

/* --- atomics: one OS thread runs every emulated thread and a fiber only yields at a barrier, so a
 * plain read-modify-write is atomic. Each returns the old value, as CUDA's do. Under the order check
 * (LQ_CUDA_EMU_RACE, emu_race.cpp) each notes the bytes it touches: they may differ by design. */
extern bool lq_emu_race_atomics;
void lq_emu_race_atomic(const void *p, size_t n);
#define LQ_EMU_ATOMIC(T, body)                                                                                  \
    {                                                                                                          \
        if (lq_emu_race_atomics) lq_emu_race_atomic(p, sizeof(T));                                              \
        T o = *p;                                                                                              \
        body;                                                                                                  \
        return o;                                                                                              \
    }
template <typename T> static inline T atomicAdd(T *p, T v) LQ_EMU_ATOMIC(T, *p = o + v)
template <typename T> static inline T atomicSub(T *p, T v) LQ_EMU_ATOMIC(T, *p = o - v)
template <typename T> static inline T atomicMin(T *p, T v) LQ_EMU_ATOMIC(T, if (v < o) *p = v)
template <typename T> static inline T atomicMax(T *p, T v) LQ_EMU_ATOMIC(T, if (v > o) *p = v)
template <typename T> static inline T atomicExch(T *p, T v) LQ_EMU_ATOMIC(T, *p = v)
template <typename T> static inline T atomicCAS(T *p, T cmp, T v) LQ_EMU_ATOMIC(T, if (o == cmp) *p = v)
template <typename T> static inline T atomicOr(T *p, T v) LQ_EMU_ATOMIC(T, *p = o | v)
template <typename T> static inline T atomicAnd(T *p, T v) LQ_EMU_ATOMIC(T, *p = o & v)
#undef LQ_EMU_ATOMIC

/* --- loads and stores with cache hints: plain accesses */
template <typename T> static inline T __ldg(const T *p) { return *p; }
template <typename T> static inline T __ldcs(const T *p) { return *p; }
template <typename T> static inline T __ldcg(const T *p) { return *p; }
template <typename T> static inline void __stcs(T *p, T v) { *p = v; }
template <typename T> static inline void __stcg(T *p, T v) { *p = v; }
template <typename T> static inline void __stwt(T *p, T v) { *p = v; }

/* --- arithmetic intrinsics: correctly rounded IEEE single operations (the host's SSE arithmetic is;
 * -ffp-contract=off keeps a * b + c two roundings). The approximate ones (__expf, __logf, ...)
 * become the exact libm functions: a difference from the GPU, within the suites' bounds. */
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fsqrt_rn(float a) { return std::sqrt(a); }
static inline float __frcp_rn(float a) { return 1.0f / a; }
static inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
static inline float __fdividef(float a, float b) { return a / b; }
/* __expf, __logf, __sinf, __cosf, __powf: glibc's <math.h> already declares them, as its exact libm
 * functions (what the emulator wants), so they are not defined here */
static inline float __saturatef(float a) { return a != a ? 0.0f : a < 0.0f ? 0.0f : a > 1.0f ? 1.0f : a; }
static inline float rsqrtf(float a) { return 1.0f / std::sqrt(a); }

static inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
static inline int __float_as_int(float f) { int u; memcpy(&u, &f, 4); return u; }
static inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
static inline float __int_as_float(int u) { float f; memcpy(&f, &u, 4); return f; }
static inline long long __double_as_longlong(double d) { long long u; memcpy(&u, &d, 8); return u; }
static inline double __longlong_as_double(long long u) { double d; memcpy(&d, &u, 8); return d; }
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
static inline int __clzll(long long x) { return x ? __builtin_clzll((unsigned long long)x) : 64; }
static inline int __ffs(int x) { return __builtin_ffs(x); }

/* --- launches (cu2cpp.py writes these) */
/* The kernel's parameters as a tuple type: the launch converts its arguments once, on the host. */
template <typename K> struct lq_emu_params;
template <typename... P> struct lq_emu_params<void(P...)> { using type = std::tuple<P...>; };
template <typename... P> struct lq_emu_params<void (*)(P...)> { using type = std::tuple<P...>; };
template <typename K> using lq_emu_args = typename lq_emu_params<std::remove_cv_t<std::remove_reference_t<K>>>::type;

/* Runs body(arg) for every thread of every block (emu_runtime.cpp); a bad configuration sets the
 * sticky launch error (cudaGetLastError) and runs nothing, as CUDA does. fn is the kernel (its
 * cudaFuncSetAttribute opt-in to more than 48 KiB of dynamic shared memory is looked up by it). */
void lq_emu_run(dim3 grid, dim3 block, size_t shmem, cudaStream_t stream, const char *name,
                void (*body)(void *), void *arg, const void *fn);
/* Whether a launch's configuration is one CUDA accepts; if not, sets the sticky launch error. */
bool lq_emu_launch_ok(dim3 grid, dim3 block, size_t shmem, const void *fn);
/* Stream order (emu_api.cpp): work on a non-blocking stream is queued until something waits for it;
 * on any other stream it runs now. */
bool lq_emu_defers(cudaStream_t s);
void lq_emu_enqueue(cudaStream_t s, const char *what, std::function<void()> work);
/* A kernel's dynamic shared memory limit: 48 KiB unless cudaFuncSetAttribute
 * (cudaFuncAttributeMaxDynamicSharedMemorySize, at most LQ_EMU_SHARED_OPTIN) raised it. */
#define LQ_EMU_SHARED_OPTIN (227 << 10) /* an H100's opt-in maximum per block */
size_t lq_emu_max_dyn_shared(const void *fn);
void lq_emu_set_max_dyn_shared(const void *fn, size_t bytes);
/* Called (cu2cpp.py adds the call) after each __shared__ declaration: the first thread of a block to
 * reach it fills the array with 0xff bytes (NaN, -1), as shared memory a block has not written yet. */
void lq_emu_shared_first(void *p, size_t bytes);
/* The current launch's dynamic shared memory (extern __shared__; NaN bytes at each block's start). */
void *lq_emu_dyn_shared(void);

template <typename K, typename T> struct lq_emu_call {
    K kernel;
    T *args;
    static void run(void *p) {
        lq_emu_call *c = (lq_emu_call *)p;
        std::apply(c->kernel, *c->args); /* each thread's parameters are copies */
    }
};

/* A bad configuration fails at the launch, as on a GPU; the work itself runs in stream order (a
 * queued launch holds its own copy of the converted arguments). */
template <typename K, typename T>
static inline void lq_emu_launch(dim3 grid, dim3 block, size_t shmem, cudaStream_t stream, const char *name, K *kernel,
                                 T args) {
    if (!lq_emu_launch_ok(grid, block, shmem, (const void *)kernel)) return;
    lq_emu_enqueue(stream, name, [=]() mutable {
        lq_emu_call<K *, T> c{kernel, &args};
        lq_emu_run(grid, block, shmem, stream, name, &lq_emu_call<K *, T>::run, &c, (const void *)kernel);
    });
}

#endif /* __cplusplus */
#endif
