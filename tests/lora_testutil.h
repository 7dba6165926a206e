/* tests/lora_testutil.h: the LoRA tests' access to their fixture (tests/fixtures/lora/lora.lqfx). */
#ifndef LQ_TESTS_LORA_TESTUTIL_H
#define LQ_TESTS_LORA_TESTUTIL_H

#include <stdio.h>

#include "testutil.h"

static inline lq_fixture *load_fx(void) {
    char path[512];
    return lq_fixture_load(lq_fixture_path("lora/lora.lqfx", path, sizeof path));
}

static inline const lq_fx_tensor *need(const lq_fixture *fx, const char *name) {
    const lq_fx_tensor *r = lq_fixture_find(fx, "%s", name);
    if (!r) fail_msg("fixture lora/lora.lqfx has no record %s", name);
    return r;
}

static inline const lq_fx_tensor *needf(const lq_fixture *fx, const char *a, const char *b) {
    char name[640];
    snprintf(name, sizeof name, "%s/%s", a, b);
    return need(fx, name);
}

#endif
