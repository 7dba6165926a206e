/* tools/cuda_emu/emu_selftest.cu: checks the CPU emulator itself (make test-cuda-emu runs it first):
 * barriers, indices, shuffles and votes, shared-memory poisoning, dynamic shared memory, launch
 * errors, argument conversion, the deadlock / divergence / idle-lane reports, WMMA's address rules, and the cuBLAS
 * reference against a naive GEMM in double, with the tf32 / bf16 operand rounding. Built only with
 * EMU=1 (cu2cpp.py + g++). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern "C" { /* cmocka.h has no C++ guard of its own */
#include <cmocka.h>
}
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include "emu_race.h"

/* --- kernels ------------------------------------------------------------------------------------ */

/* out[b] = sum of in[b * 256 + t] by a shared-memory tree (the usual block reduction) */
__global__ void k_block_sum(const float *in, float *out) {
    __shared__ float sh[256];
    const int t = threadIdx.x;
    sh[t] = in[blockIdx.x * 256 + t];
    __syncthreads();
    for (int s = 128; s > 0; s >>= 1) {
        if (t < s) sh[t] += sh[t + s];
        __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = sh[0];
}

/* every thread writes its global linear id: 3-D blocks in a 2-D grid */
__global__ void k_ids(int *out) {
    const int b = blockIdx.x + blockIdx.y * gridDim.x;
    const int t = threadIdx.x + threadIdx.y * blockDim.x + threadIdx.z * blockDim.x * blockDim.y;
    const int nt = blockDim.x * blockDim.y * blockDim.z;
    out[b * nt + t] = b * nt + t;
}

/* per thread: [0] warp sum by xor, [1] shfl_down by 1 (width 16), [2] lane 5's value, [3] shfl_up
 * by 2, [4] ballot of odd lanes, [5] any(lane == 7), [6] all(lane < 40) */
__global__ void k_warp(int *out) {
    const int t = threadIdx.x, lane = t & 31;
    int v = t;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int *o7 = out + t * 7;
    o7[0] = v;
    o7[1] = __shfl_down_sync(0xffffffffu, t, 1, 16);
    o7[2] = __shfl_sync(0xffffffffu, t, 5);
    o7[3] = __shfl_up_sync(0xffffffffu, t, 2);
    o7[4] = (int)__ballot_sync(0xffffffffu, lane & 1);
    o7[5] = __any_sync(0xffffffffu, lane == 7);
    o7[6] = __all_sync(0xffffffffu, lane < 40);
}

/* reads its shared slot before writing it: must see the poison (NaN bits) in every block */
__global__ void k_read_first(unsigned *out) {
    __shared__ unsigned sh[64];
    out[blockIdx.x * 64 + threadIdx.x] = sh[threadIdx.x];
    __syncthreads();
    sh[threadIdx.x] = 7u;
}

/* reverses each block's slice through dynamic shared memory */
__global__ void k_reverse(const float *in, float *out) {
    extern __shared__ float dyn[];
    const int t = threadIdx.x, n = blockDim.x;
    dyn[t] = in[blockIdx.x * n + t];
    __syncthreads();
    out[blockIdx.x * n + t] = dyn[n - 1 - t];
}

template <typename T, int K> __global__ void k_scale(T *x, int n, const T *maybe) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = x[i] * (T)K + (maybe ? maybe[i] : (T)0);
}

__global__ void k_atomics(int *sum, unsigned long long *mn) {
    atomicAdd(sum, (int)threadIdx.x);
    atomicMin(mn, (unsigned long long)(1000 - threadIdx.x));
}

/* thread 0 waits at __syncthreads, thread 1 at __syncwarp: neither barrier can ever open */
__global__ void k_deadlock(int *x) {
    if (threadIdx.x == 0) __syncthreads();
    else if (threadIdx.x == 1) __syncwarp();
    x[threadIdx.x] = 1;
}

/* two halves of a block meet at different __syncthreads calls: undefined on a GPU, a warning here */
__global__ void k_divergent(int *x) {
    if (threadIdx.x < 32) {
        x[threadIdx.x] = 1;
        __syncthreads();
    } else {
        __syncthreads();
        x[threadIdx.x] = 2;
    }
}

/* x[i] = v for i < n */
__global__ void k_set(float *x, float v, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = v;
}

/* 48 threads: warp 1's lanes 0-15 xor 16 read lanes 16-31, which do not exist */
__global__ void k_idle_lane(int *x) { x[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (int)threadIdx.x, 16); }

/* one warp: a 16 x 16 bf16 tile from global memory into dynamic shared memory at element offset off
 * with row stride ldm, loaded as a wmma matrix_a, times the identity, stored to out (16 x 16 f32);
 * align[0] = the dynamic buffer's address mod 128 */
__global__ void k_wmma_at(const __nv_bfloat16 *in, float *out, int off, int ldm, int *align) {
    extern __shared__ __nv_bfloat16 dsm[];
    using namespace nvcuda;
    for (int i = threadIdx.x; i < 256; i += 32) dsm[off + (i / 16) * ldm + i % 16] = in[i];
    for (int i = threadIdx.x; i < 256; i += 32) /* the identity */
        dsm[off + 16 * ldm + i] = __float2bfloat16(i / 16 == i % 16 ? 1.0f : 0.0f);
    if (threadIdx.x == 0) align[0] = (int)((uintptr_t)dsm % 128);
    __syncwarp();
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> b;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
    wmma::fill_fragment(c, 0.0f);
    wmma::load_matrix_sync(a, dsm + off, (unsigned)ldm);
    wmma::load_matrix_sync(b, dsm + off + 16 * ldm, 16);
    wmma::mma_sync(c, a, b, c);
    wmma::store_matrix_sync(out, c, 16, wmma::mem_row_major);
}

/* kernels for the order check (LQ_CUDA_EMU_RACE): the last of all threads to write x[0] wins */
__global__ void k_last_writer(int *x) { x[0] = (int)(blockIdx.x * blockDim.x + threadIdx.x); }
/* block 1 reads what block 0 writes, with nothing to order them */
__global__ void k_block_reads(float *x) {
    const int t = threadIdx.x;
    if (blockIdx.x == 0) x[t] = 1.0f + (float)t;
    else x[32 + t] = 2.0f * x[t];
}
/* thread t reads y[63 - t], which thread 63 - t writes without a barrier between: an effect of
 * 1e-7 relative, inside any parity bound */
__global__ void k_small_race(float *out, float *y) {
    const int t = threadIdx.x;
    y[t] = 1e-7f * (float)(t + 1);
    out[t] = 1.0f + y[63 - t];
}
/* x[t] += 1 by every block, without an atomic: a lost update on a GPU; the same bits in any order */
__global__ void k_plain_sum(float *x) { x[threadIdx.x] += 1.0f; }
/* float atomics from every block (bits depend on the order, by design) and a plain per-thread write */
__global__ void k_atomic_sum(float *s, float *x) {
    atomicAdd(s, blockIdx.x + threadIdx.x == 0 ? 1e8f : 1.0f); /* 1e8 first: the ones round away */
    x[blockIdx.x * blockDim.x + threadIdx.x] = (float)blockIdx.x;
}

/* half a warp returns before a wmma multiply: undefined on a GPU, a warning here */
__global__ void k_wmma_half(const __nv_bfloat16 *in, float *out) {
    using namespace nvcuda;
    if (threadIdx.x >= 16) return;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> b;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
    wmma::fill_fragment(c, 0.0f);
    wmma::load_matrix_sync(a, in, 16);
    wmma::load_matrix_sync(b, in, 16);
    wmma::mma_sync(c, a, b, c);
    wmma::store_matrix_sync(out, c, 16, wmma::mem_row_major);
}

#define LAUNCH1(kernel, n, ...) kernel<<<((n) + 127) / 128, 128>>>(__VA_ARGS__)
#define K_TWICE k_scale<float, 2>

static int g_calls;
static int next_n(void) {
    g_calls++;
    return 100;
}

/* --- tests -------------------------------------------------------------------------------------- */

static void test_block_sum_and_ids(void **state) {
    (void)state;
    float *in, *out;
    assert_int_equal(cudaMalloc((void **)&in, 3 * 256 * sizeof(float)), cudaSuccess);
    assert_int_equal(cudaMalloc((void **)&out, 3 * sizeof(float)), cudaSuccess);
    for (int i = 0; i < 3 * 256; i++) in[i] = (float)(i % 17);
    k_block_sum<<<3, 256>>>(in, out);
    assert_int_equal(cudaGetLastError(), cudaSuccess);
    for (int b = 0; b < 3; b++) {
        double want = 0;
        for (int t = 0; t < 256; t++) want += in[b * 256 + t];
        assert_true(out[b] == (float)want);
    }
    int *ids;
    const int n = 3 * 2 * 8 * 4 * 2;
    assert_int_equal(cudaMalloc((void **)&ids, n * sizeof(int)), cudaSuccess);
    k_ids<<<dim3(3, 2), dim3(8, 4, 2)>>>(ids);
    for (int i = 0; i < n; i++) assert_int_equal(ids[i], i);
    cudaFree(in), cudaFree(out), cudaFree(ids);
}

static void test_warp(void **state) {
    (void)state;
    int *o;
    assert_int_equal(cudaMalloc((void **)&o, 64 * 7 * sizeof(int)), cudaSuccess);
    k_warp<<<1, 64>>>(o);
    for (int t = 0; t < 64; t++) {
        const int w = t / 32 * 32, lane = t & 31, *r = o + t * 7;
        assert_int_equal(r[0], 32 * w + 31 * 32 / 2);
        assert_int_equal(r[1], (lane & 15) + 1 < 16 ? t + 1 : t);
        assert_int_equal(r[2], w + 5);
        assert_int_equal(r[3], lane >= 2 ? t - 2 : t);
        assert_int_equal((unsigned)r[4], 0xaaaaaaaau);
        assert_int_equal(r[5], 1);
        assert_int_equal(r[6], 1);
    }
    cudaFree(o);
}

static void test_shared_poison_and_dynamic(void **state) {
    (void)state;
    unsigned *u;
    assert_int_equal(cudaMalloc((void **)&u, 2 * 64 * sizeof(unsigned)), cudaSuccess);
    k_read_first<<<2, 64>>>(u);
    for (int i = 0; i < 128; i++) assert_int_equal(u[i], 0xffffffffu);
    float *in, *out;
    assert_int_equal(cudaMalloc((void **)&in, 2 * 96 * sizeof(float)), cudaSuccess);
    assert_int_equal(cudaMalloc((void **)&out, 2 * 96 * sizeof(float)), cudaSuccess);
    for (int i = 0; i < 192; i++) in[i] = (float)i;
    k_reverse<<<2, 96, 96 * sizeof(float)>>>(in, out);
    assert_int_equal(cudaGetLastError(), cudaSuccess);
    for (int b = 0; b < 2; b++)
        for (int t = 0; t < 96; t++) assert_true(out[b * 96 + t] == in[b * 96 + 95 - t]);
    cudaFree(u), cudaFree(in), cudaFree(out);
}

static void test_launch_rules(void **state) {
    (void)state;
    float *x, *y;
    assert_int_equal(cudaMalloc((void **)&x, 300 * sizeof(float)), cudaSuccess);
    assert_int_equal(cudaMalloc((void **)&y, 300 * sizeof(float)), cudaSuccess);
    for (int i = 0; i < 300; i++) x[i] = 1.0f, y[i] = (float)i;
    k_scale<float, 3><<<1, 1025>>>(x, 300, NULL); /* too many threads: nothing runs */
    assert_int_equal(cudaPeekAtLastError(), cudaErrorInvalidConfiguration);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidConfiguration);
    assert_int_equal(cudaGetLastError(), cudaSuccess);
    assert_true(x[0] == 1.0f);
    k_scale<float, 3><<<0, 32>>>(x, 300, NULL);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidConfiguration);
    k_reverse<<<1, 32, 64 << 10>>>(x, y);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidValue);
    /* over 48 KiB once the kernel opted in (cudaFuncSetAttribute), never over the device's maximum */
    int optin = 0;
    assert_int_equal(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0), cudaSuccess);
    const cudaFuncAttribute dyn = cudaFuncAttributeMaxDynamicSharedMemorySize;
    assert_int_equal(cudaFuncSetAttribute((const void *)k_reverse, dyn, optin + 1), cudaErrorInvalidValue);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidValue);
    assert_int_equal(cudaFuncSetAttribute((const void *)k_reverse, dyn, 64 << 10), cudaSuccess);
    k_reverse<<<1, 32, 64 << 10>>>(x, y);
    assert_int_equal(cudaGetLastError(), cudaSuccess);
    assert_true(y[0] == 1.0f && y[31] == 1.0f); /* it ran: x's ones */
    k_reverse<<<1, 32, (64 << 10) + 4>>>(x, y);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidValue);
    for (int i = 0; i < 300; i++) y[i] = (float)i;
    /* arguments converted once, on the host: next_n runs once; NULL reaches a pointer parameter */
    g_calls = 0;
    k_scale<float, 3><<<3, 128>>>(x, next_n(), NULL);
    assert_int_equal(g_calls, 1);
    for (int i = 0; i < 300; i++) assert_true(x[i] == (i < 100 ? 3.0f : 1.0f));
    LAUNCH1(K_TWICE, 300, x, 300, y); /* a launch inside a macro, template-id kernel */
    for (int i = 0; i < 300; i++) assert_true(x[i] == (i < 100 ? 6.0f : 2.0f) + (float)i);
    int *sum;
    unsigned long long *mn;
    assert_int_equal(cudaMalloc((void **)&sum, sizeof(int)), cudaSuccess);
    assert_int_equal(cudaMalloc((void **)&mn, sizeof(unsigned long long)), cudaSuccess);
    *sum = 0, *mn = ~0ull;
    k_atomics<<<2, 256>>>(sum, mn);
    assert_int_equal(*sum, 2 * 255 * 256 / 2);
    assert_int_equal(*mn, 1000 - 255);
    cudaFree(x), cudaFree(y), cudaFree(sum), cudaFree(mn);
}

static void test_deadlock_reported(void **state) {
    (void)state;
    fflush(stdout);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (!freopen("/dev/null", "w", stderr)) _exit(3);
        int *x;
        if (cudaMalloc((void **)&x, 64 * sizeof(int)) != cudaSuccess) _exit(3);
        k_deadlock<<<1, 64>>>(x);
        _exit(0); /* not reached: the emulator aborts */
    }
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
}

/* WMMA's address rules: dynamic shared memory starts 128-byte aligned; a tile at a 32-byte
 * boundary with ldm a multiple of 16 bytes loads, stores and multiplies; a pointer 16 bytes off the
 * boundary, or ldm 12 (24 bytes), aborts (a child process). */
static void test_wmma_alignment(void **state) {
    (void)state;
    __nv_bfloat16 *in;
    float *out;
    int *al;
    assert_int_equal(cudaMalloc((void **)&in, 256 * sizeof *in), cudaSuccess);
    assert_int_equal(cudaMalloc((void **)&out, 256 * sizeof *out), cudaSuccess);
    assert_int_equal(cudaMalloc((void **)&al, sizeof *al), cudaSuccess);
    for (int i = 0; i < 256; i++) in[i] = __float2bfloat16((float)(i % 37) - 18.0f);
    const size_t smem = (size_t)(16 + 32 * 24 + 256) * sizeof(__nv_bfloat16);
    k_wmma_at<<<1, 32, smem>>>(in, out, 16, 24, al); /* 32 bytes in, ldm 48 bytes */
    assert_int_equal(cudaGetLastError(), cudaSuccess);
    assert_int_equal(al[0], 0);
    for (int i = 0; i < 256; i++) assert_true(out[i] == (float)(i % 37) - 18.0f);
    const int bad[2][2] = {{8, 24}, {0, 12}}; /* (offset, ldm): 16 bytes off; a 24-byte stride */
    for (int k = 0; k < 2; k++) {
        fflush(stdout);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            if (!freopen("/dev/null", "w", stderr)) _exit(3);
            k_wmma_at<<<1, 32, smem>>>(in, out, bad[k][0], bad[k][1], al);
            _exit(0); /* not reached: the emulator aborts */
        }
        int st = 0;
        assert_int_equal(waitpid(pid, &st, 0), pid);
        assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
    }
    cudaFree(in), cudaFree(out), cudaFree(al);
}

/* A non-blocking stream's work runs only when something waits for it: before the join the main
 * stream (and a host copy on the legacy stream) still sees the old contents; work the main stream
 * queued after the fork is done before the side's. */
static void test_side_stream_order(void **state) {
    (void)state;
    cudaStream_t main_s, side;
    cudaEvent_t fork_ev, join_ev;
    assert_int_equal(cudaStreamCreateWithFlags(&main_s, cudaStreamDefault), cudaSuccess);
    assert_int_equal(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking), cudaSuccess);
    assert_int_equal(cudaEventCreateWithFlags(&fork_ev, cudaEventDisableTiming), cudaSuccess);
    assert_int_equal(cudaEventCreateWithFlags(&join_ev, cudaEventDisableTiming), cudaSuccess);
    float *x, h[4];
    assert_int_equal(cudaMalloc((void **)&x, 4 * sizeof(float)), cudaSuccess);
    k_set<<<1, 32, 0, main_s>>>(x, 1.0f, 4);
    assert_int_equal(cudaEventRecord(fork_ev, main_s), cudaSuccess);
    assert_int_equal(cudaStreamWaitEvent(side, fork_ev, 0), cudaSuccess);
    k_set<<<1, 32, 0, side>>>(x, 2.0f, 2); /* x[0..1] = 2 on the side */
    assert_int_equal(cudaEventRecord(join_ev, side), cudaSuccess);
    k_set<<<1, 32, 0, main_s>>>(x + 2, 3.0f, 2); /* x[2..3] = 3 on main, after the fork */
    assert_int_equal(cudaMemcpy(h, x, sizeof h, cudaMemcpyDeviceToHost), cudaSuccess);
    assert_true(h[0] == 1.0f && h[1] == 1.0f && h[2] == 3.0f && h[3] == 3.0f); /* no join yet */
    assert_int_equal(cudaStreamWaitEvent(main_s, join_ev, 0), cudaSuccess);
    assert_int_equal(cudaMemcpy(h, x, sizeof h, cudaMemcpyDeviceToHost), cudaSuccess);
    assert_true(h[0] == 2.0f && h[1] == 2.0f && h[2] == 3.0f && h[3] == 3.0f);
    /* a side gemm waits as well; a synchronize of the side stream runs it */
    cublasHandle_t hb;
    assert_int_equal(cublasCreate(&hb), CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasSetStream(hb, side), CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cudaEventRecord(fork_ev, main_s), cudaSuccess);
    assert_int_equal(cudaStreamWaitEvent(side, fork_ev, 0), cudaSuccess);
    const float one = 1.0f, zero = 0.0f; /* x[0] = x[1] x[2] (1 x 1 x 1) */
    assert_int_equal(cublasGemmEx(hb, CUBLAS_OP_N, CUBLAS_OP_N, 1, 1, 1, &one, x + 1, CUDA_R_32F, 1, x + 2, CUDA_R_32F,
                                  1, &zero, x, CUDA_R_32F, 1, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                     CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cudaMemcpy(h, x, sizeof h, cudaMemcpyDeviceToHost), cudaSuccess);
    assert_true(h[0] == 2.0f);
    assert_int_equal(cudaStreamSynchronize(side), cudaSuccess);
    assert_int_equal(cudaMemcpy(h, x, sizeof h, cudaMemcpyDeviceToHost), cudaSuccess);
    assert_true(h[0] == 6.0f);
    cublasDestroy(hb);
    cudaEventDestroy(fork_ev), cudaEventDestroy(join_ev);
    cudaStreamDestroy(side), cudaStreamDestroy(main_s);
    cudaFree(x);
}

/* The lint: work queued on a non-blocking stream while the stream it was forked from has newer work
 * it has not waited for aborts (a child process), and so does work on one that never waited. */
static void test_side_stream_lint(void **state) {
    (void)state;
    for (int never = 0; never < 2; never++) {
        fflush(stdout);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            if (!freopen("/dev/null", "w", stderr)) _exit(3);
            cudaStream_t main_s, side;
            cudaEvent_t ev;
            float *x;
            if (cudaStreamCreateWithFlags(&main_s, cudaStreamDefault) != cudaSuccess ||
                cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking) != cudaSuccess ||
                cudaEventCreate(&ev) != cudaSuccess || cudaMalloc((void **)&x, 4 * sizeof(float)) != cudaSuccess)
                _exit(3);
            if (!never) {
                cudaEventRecord(ev, main_s);
                cudaStreamWaitEvent(side, ev, 0);
                k_set<<<1, 32, 0, side>>>(x, 2.0f, 4); /* fine: nothing newer on main */
                k_set<<<1, 32, 0, main_s>>>(x, 1.0f, 4);
            }
            k_set<<<1, 32, 0, side>>>(x, 2.0f, 4); /* aborts */
            _exit(0);
        }
        int st = 0;
        assert_int_equal(waitpid(pid, &st, 0), pid);
        assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
    }
}

/* Runs child() in a forked process with its stderr into a file; returns the child's exit status (-1
 * when it did not exit) and its stderr in buf (n bytes at most, NUL-terminated). The emulator's
 * findings go to stderr, and some abort. */
static int in_child(int (*child)(void), char *buf, size_t n) {
    char path[] = "/tmp/lq_emu_selftest_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) _exit(dup2(fd, 2) < 0 ? 3 : child());
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    ssize_t k = pread(fd, buf, n - 1, 0);
    close(fd);
    unlink(path);
    buf[k > 0 ? k : 0] = 0;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int warnings_child(void) {
    int *x;
    if (cudaMalloc((void **)&x, 64 * sizeof(int)) != cudaSuccess) return 3;
    k_divergent<<<1, 64>>>(x);
    k_idle_lane<<<1, 48>>>(x);
    /* a lane with a partner gets its partner's value; the idle-lane reader its own */
    if (!(x[0] == 16 && x[16] == 0 && x[32] == 32)) return 4;
    __nv_bfloat16 *in;
    float *out;
    if (cudaMalloc((void **)&in, 256 * sizeof *in) != cudaSuccess || cudaMalloc((void **)&out, 1024) != cudaSuccess)
        return 3;
    for (int i = 0; i < 256; i++) in[i] = __float2bfloat16(1.0f);
    k_wmma_half<<<1, 32>>>(in, out);
    return 0;
}

static void test_warnings(void **state) {
    (void)state;
    char buf[4096];
    assert_int_equal(in_child(warnings_child, buf, sizeof buf), 0);
    assert_non_null(strstr(buf, "kernel k_divergent: threads of one block met at different __syncthreads calls"));
    assert_non_null(strstr(buf, "kernel k_idle_lane: a shuffle read a lane that is not running"));
    assert_non_null(strstr(buf, "kernel k_wmma_half: a wmma call without the whole warp"));
}

/* --- the cuBLAS reference ----------------------------------------------------------------------- */

static float tf32(float f) { /* round to nearest even at 10 mantissa bits */
    uint32_t u;
    memcpy(&u, &f, 4);
    u = (u + 0xfffu + ((u >> 13) & 1u)) & ~0x1fffu;
    memcpy(&f, &u, 4);
    return f;
}

static void test_gemm(void **state) {
    (void)state;
    cublasHandle_t h;
    assert_int_equal(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
    const int m = 5, n = 4, k = 3, ld = 9;
    float A[9 * 9], B[9 * 9], C[9 * 9];
    for (int i = 0; i < 81; i++) A[i] = (float)((i * 7) % 11) - 5.0f, B[i] = (float)((i * 5) % 13) - 6.0f;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            for (int bz = 0; bz < 2; bz++) {
                const float alpha = 1.5f, beta = bz ? 0.5f : 0.0f;
                for (int i = 0; i < 81; i++) C[i] = bz ? (float)i : NAN; /* beta 0 never reads C */
                float C0[81];
                memcpy(C0, C, sizeof C);
                assert_int_equal(cublasGemmEx(h, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N, m,
                                              n, k, &alpha, A, CUDA_R_32F, ld, B, CUDA_R_32F, ld, &beta, C,
                                              CUDA_R_32F, ld, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                                 CUBLAS_STATUS_SUCCESS);
                for (int j = 0; j < n; j++)
                    for (int i = 0; i < m; i++) {
                        double s = 0;
                        for (int l = 0; l < k; l++)
                            s += (double)(ta ? A[l + i * ld] : A[i + l * ld]) * (tb ? B[j + l * ld] : B[l + j * ld]);
                        const double want = alpha * s + (bz ? beta * C0[i + j * ld] : 0.0);
                        assert_true(fabs(C[i + j * ld] - want) <= 1e-4 * (1 + fabs(want)));
                    }
                assert_true(bz || isnan(C[m])); /* rows past m untouched */
            }
    /* tf32 / bf16 round the operands: 1 + 2^-12 is 1 in both, exact in fp32 */
    float a = 1.0f + 1.0f / 4096, b = 3.0f, c = 0, one = 1, zero = 0;
    assert_true(tf32(a) == 1.0f);
    cublasComputeType_t cts[3] = {CUBLAS_COMPUTE_32F, CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_COMPUTE_32F_FAST_16BF};
    float want[3] = {3.0f * a, 3.0f, 3.0f};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 1, 1, 1, &one, &a, CUDA_R_32F, 1, &b, CUDA_R_32F,
                                      1, &zero, &c, CUDA_R_32F, 1, cts[i], CUBLAS_GEMM_DEFAULT),
                         CUBLAS_STATUS_SUCCESS);
        assert_true(c == want[i]);
    }
    /* bf16 inputs, strided batches of two, and pointer-array batches */
    __nv_bfloat16 Ab[2 * 6], Bb[2 * 6];
    float Cb[2 * 4];
    for (int i = 0; i < 12; i++) Ab[i] = __float2bfloat16_rn((float)i), Bb[i] = __float2bfloat16_rn((float)(i % 5));
    assert_int_equal(cublasGemmStridedBatchedEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &one, Ab, CUDA_R_16BF, 2, 6, Bb,
                                                CUDA_R_16BF, 3, 6, &zero, Cb, CUDA_R_32F, 2, 4, 2, CUBLAS_COMPUTE_32F,
                                                CUBLAS_GEMM_DEFAULT),
                     CUBLAS_STATUS_SUCCESS);
    for (int z = 0; z < 2; z++)
        for (int j = 0; j < 2; j++)
            for (int i = 0; i < 2; i++) {
                float s = 0;
                for (int l = 0; l < 3; l++) s += (float)(z * 6 + i + 2 * l) * (float)((z * 6 + l + 3 * j) % 5);
                assert_true(Cb[z * 4 + i + 2 * j] == s);
            }
    float Cp[2 * 4];
    const void *Ap[2] = {Ab, Ab + 6}, *Bp[2] = {Bb, Bb + 6};
    void *Cpp[2] = {Cp, Cp + 4};
    assert_int_equal(cublasGemmBatchedEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &one, Ap, CUDA_R_16BF, 2, Bp,
                                         CUDA_R_16BF, 3, &zero, Cpp, CUDA_R_32F, 2, 2, CUBLAS_COMPUTE_32F,
                                         CUBLAS_GEMM_DEFAULT),
                     CUBLAS_STATUS_SUCCESS);
    assert_memory_equal(Cp, Cb, sizeof Cp);
    /* cuBLAS's argument checks: lda under the rows of A, a negative size */
    assert_int_equal(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 1, 1, &one, A, CUDA_R_32F, 3, B, CUDA_R_32F, 1,
                                  &zero, C, CUDA_R_32F, 4, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                     CUBLAS_STATUS_INVALID_VALUE);
    assert_int_equal(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, -1, 1, 1, &one, A, CUDA_R_32F, 1, B, CUDA_R_32F, 1,
                                  &zero, C, CUDA_R_32F, 1, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                     CUBLAS_STATUS_INVALID_VALUE);
    assert_int_equal(cublasDestroy(h), CUBLAS_STATUS_SUCCESS);
}

static int race_child(void) {
    lq_emu_race_force(true);
    int *xi;
    float *xf, *y, *s;
    if (cudaMalloc((void **)&xi, 4) || cudaMalloc((void **)&xf, 256 * 4) || cudaMalloc((void **)&y, 64 * 4) ||
        cudaMalloc((void **)&s, 4))
        return 3;
    k_last_writer<<<4, 64>>>(xi);
    k_block_reads<<<2, 32>>>(xf);
    k_set<<<1, 64>>>(y, 0.0f, 64);
    k_small_race<<<1, 64>>>(xf, y);
    const float out0 = xf[0]; /* 1 + y[63] as the second run (threads last to first) found it */
    k_set<<<1, 64>>>(y, 0.0f, 64);
    k_plain_sum<<<3, 4>>>(y);
    *s = 0.0f;
    k_atomic_sum<<<8, 32>>>(s, xf);
    k_set<<<2, 128>>>(y, 5.0f, 64);
    lq_emu_race_force(false);
    /* the second run's memory: blocks last to first, threads opposite to LQ_CUDA_EMU_ORDER: block 0
     * last, its thread 0 (63 when the second run goes forward) wrote x[0] last, and thread 0 read
     * y[63] after (before) thread 63 wrote it */
    const char *o = getenv("LQ_CUDA_EMU_ORDER");
    const bool fwd2 = o && strcmp(o, "reverse") == 0;
    const float want0 = fwd2 ? 1.0f : 1.0f + 1e-7f * 64.0f;
    return *xi == (fwd2 ? 63 : 0) && out0 == want0 && xf[255] == 7.0f && y[63] == 5.0f ? 0 : 4;
}

/* The order check finds a race between blocks, one inside a block whose effect is far below any
 * tolerance, last-writer-wins, and blocks adding into one place without atomics; it leaves atomics
 * and clean kernels alone; memory ends as the second run left it. In a child, the mode switched on
 * there. */
static void test_race_check(void **state) {
    (void)state;
    char buf[8192];
    const int rc = in_child(race_child, buf, sizeof buf);
    if (rc != 0) fprintf(stderr, "child: exit %d, stderr:\n%s", rc, buf);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(buf, "RACE in kernel k_last_writer"));
    assert_non_null(strstr(buf, "RACE in kernel k_block_reads"));
    assert_non_null(strstr(buf, "RACE in kernel k_small_race"));
    assert_non_null(strstr(buf, "RACE in kernel k_plain_sum: blocks 0 and 1 (linear ids) both wrote the word at byte 0"));
    assert_null(strstr(buf, "k_atomic_sum"));
    assert_null(strstr(buf, "k_set"));
}

int main(void) {
    printf("CUDA device: emulated on the CPU (the emulator's own checks)\n");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_block_sum_and_ids), cmocka_unit_test(test_warp),
        cmocka_unit_test(test_shared_poison_and_dynamic), cmocka_unit_test(test_launch_rules),
        cmocka_unit_test(test_deadlock_reported), cmocka_unit_test(test_warnings), cmocka_unit_test(test_gemm),
        cmocka_unit_test(test_side_stream_order), cmocka_unit_test(test_side_stream_lint),
        cmocka_unit_test(test_wmma_alignment), cmocka_unit_test(test_race_check),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
