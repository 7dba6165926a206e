/* autograd/arena.c: the per-step activation arena, a bump allocator that stops calling malloc
 * once it has seen a step's size. */
#include <stdint.h>
#include <stdlib.h>

#include "autograd/autograd_impl.h"
#include "core/cuda.h"

static size_t align_up(size_t n) { return (n + (LQ_ALIGN - 1)) & ~(size_t)(LQ_ALIGN - 1); }

static lq_arena_chunk *chunk_new(size_t cap, bool device) {
    cap = align_up(cap < 4096 ? 4096 : cap);
    lq_arena_chunk *c = malloc(sizeof *c);
    if (!c) return NULL;
    if (device) {
        lq_err e;
        lq_err_clear(&e);
        c->base = lq_cuda_malloc(cap, &e);
    } else {
        c->base = aligned_alloc(LQ_ALIGN, cap);
    }
    if (!c->base) {
        free(c);
        return NULL;
    }
    c->next = NULL;
    c->cap = cap;
    c->used = 0;
    return c;
}

lq_status lq_arena_init(lq_arena *a, size_t bytes) {
    a->device = false;
    a->first = a->cur = chunk_new(bytes ? bytes : ((size_t)1 << 20), false);
    a->base_used = 0;
    a->high_water = 0;
    a->sys_allocs = 1;
    return a->first ? LQ_OK : LQ_ERR_OOM;
}

lq_status lq_arena_init_device(lq_arena *a, size_t bytes, lq_err *err) {
    a->device = true;
    a->first = a->cur = chunk_new(bytes ? bytes : ((size_t)64 << 20), true);
    a->base_used = 0;
    a->high_water = 0;
    a->sys_allocs = 1;
    if (!a->first)
        return LQ_ERR(err, LQ_ERR_OOM, "could not allocate a %zu-byte device activation arena",
                      bytes ? bytes : ((size_t)64 << 20));
    return LQ_OK;
}

void lq_arena_free(lq_arena *a) {
    lq_arena_chunk *c = a->first;
    while (c) {
        lq_arena_chunk *next = c->next;
        if (a->device)
            lq_cuda_free(c->base);
        else
            free(c->base);
        free(c);
        c = next;
    }
    a->first = a->cur = NULL;
}

size_t lq_arena_used(const lq_arena *a) { return a->cur ? a->base_used + a->cur->used : 0; }

size_t lq_arena_capacity(const lq_arena *a) {
    size_t cap = 0;
    for (const lq_arena_chunk *c = a->first; c; c = c->next) cap += c->cap;
    return cap;
}

void *lq_arena_alloc(lq_arena *a, size_t bytes) {
    if (!a->cur) return NULL;
    bytes = align_up(bytes ? bytes : 1);
    while (a->cur->used + bytes > a->cur->cap) {
        if (a->cur->next) { /* later chunks are empty: move on */
            a->base_used += a->cur->used;
            a->cur = a->cur->next;
            continue;
        }
        size_t cap = a->cur->cap * 2;
        if (cap < bytes) cap = bytes;
        lq_arena_chunk *c = chunk_new(cap, a->device);
        if (!c) return NULL;
        a->sys_allocs++;
        a->cur->next = c;
        a->base_used += a->cur->used;
        a->cur = c;
    }
    void *p = a->cur->base + a->cur->used;
    a->cur->used += bytes;
    size_t used = a->base_used + a->cur->used;
    if (used > a->high_water) a->high_water = used;
    return p;
}

void lq_arena_reset_to(lq_arena *a, lq_arena_chunk *chunk, size_t used) {
    if (!a->first) return;
    if (!chunk) {
        chunk = a->first;
        used = 0;
    }
    a->base_used = 0;
    lq_arena_chunk *c = a->first;
    for (; c && c != chunk; c = c->next) a->base_used += c->used;
    if (!c) return; /* not ours: ignore rather than corrupt */
    c->used = used;
    a->cur = c;
    for (c = c->next; c; c = c->next) c->used = 0;
}

void lq_arena_reset(lq_arena *a) {
    if (!a->first) return;
    if (a->first->next) {
        /* Merge: one chunk as large as the most this arena has held at once (plus slack for
         * alignment waste at chunk ends), so steps of the same size never allocate again. */
        size_t want = lq_arena_capacity(a);
        if (want < a->high_water) want = a->high_water;
        if (a->device) { /* free first: device memory is the scarce kind */
            /* one chunk of the step's high water (not the chunks' total, which doubling leaves up
             * to twice as large): the same allocation sequence then fits exactly */
            want = a->high_water + ((size_t)1 << 20);
            bool dev = a->device;
            lq_arena_free(a);
            a->device = dev;
            a->first = a->cur = chunk_new(want, true);
            a->sys_allocs++;
            if (!a->first) a->first = a->cur = chunk_new(4096, true); /* lq_arena_alloc grows again */
            a->base_used = 0;
            if (a->first) a->first->used = 0;
            return;
        }
        lq_arena_chunk *c = chunk_new(want, false);
        if (c) {
            lq_arena_free(a);
            a->first = a->cur = c;
            a->sys_allocs++;
        }
    }
    lq_arena_reset_to(a, NULL, 0);
}

bool lq_arena_holds(const lq_arena *a, const void *p) {
    uintptr_t b = (uintptr_t)p;
    for (const lq_arena_chunk *c = a->first; c; c = c->next) {
        if (b >= (uintptr_t)c->base && b - (uintptr_t)c->base < c->used) return true;
        if (c == a->cur) break; /* the chunks after cur are empty */
    }
    return false;
}
