/* io/gguf_impl.h: private helpers shared by the GGUF reader and writer. */
#ifndef LQ_GGUF_IMPL_H
#define LQ_GGUF_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "io/io.h"

/* Bytes of one scalar value of type t (bool 1); 0 for string, array and invalid types. */
size_t lq_gguf_scalar_size(lq_gguf_type t);
/* Elements per block and bytes per block of a ggml type id gguf-py knows; false otherwise. */
bool lq_gguf_ggml_block(uint32_t id, uint32_t *block, uint32_t *bytes);

/* Sets kv->v from one little-endian scalar of type t at src (signed types sign-extended into v.i,
 * floats widened into v.f, bool into v.b, unsigned into v.u). */
void lq_gguf_scalar_decode(lq_gguf_kv *kv, lq_gguf_type t, const void *src);

#endif
