/* io/safetensors_index.c: sharded safetensors models (model.safetensors.index.json) and folders. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/io_impl.h"

#define ST_INDEX_MAX_BYTES ((size_t)100 * 1000 * 1000)
#define ST_INDEX_NAME "model.safetensors.index.json"
#define ST_SINGLE_NAME "model.safetensors"

struct lq_st_model {
    int64_t n_shards;
    lq_st_file **shards;
    int64_t n;
    const lq_st_tensor **t; /* sorted by name */
    int64_t *shard_of;      /* parallel to t */
};

void lq_st_model_close(lq_st_model *m) {
    if (!m) return;
    for (int64_t i = 0; i < m->n_shards; i++) lq_st_close(m->shards[i]);
    free(m->shards);
    free(m->t);
    free(m->shard_of);
    free(m);
}

int64_t lq_st_model_count(const lq_st_model *m) { return m->n; }
int64_t lq_st_model_shard_count(const lq_st_model *m) { return m->n_shards; }
const lq_st_file *lq_st_model_shard(const lq_st_model *m, int64_t i) {
    return i >= 0 && i < m->n_shards ? m->shards[i] : NULL;
}
const lq_st_tensor *lq_st_model_tensor_at(const lq_st_model *m, int64_t i) { return i >= 0 && i < m->n ? m->t[i] : NULL; }

static int64_t find_index(const lq_st_model *m, const char *name) {
    int64_t lo = 0, hi = m->n;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        int c = strcmp(m->t[mid]->name, name);
        if (c == 0) return mid;
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return -1;
}

const lq_st_tensor *lq_st_model_find(const lq_st_model *m, const char *name) {
    if (!name) return NULL;
    int64_t i = find_index(m, name);
    return i >= 0 ? m->t[i] : NULL;
}

typedef struct named {
    const lq_st_tensor *t;
    int64_t shard;
} named;

static int cmp_named(const void *a, const void *b) { return strcmp(((const named *)a)->t->name, ((const named *)b)->t->name); }

/* Collects every shard's tensors into one name-sorted list; a name in two shards is an error. */
static lq_status build_table(lq_st_model *m, const char *what, lq_err *err) {
    int64_t total = 0;
    for (int64_t i = 0; i < m->n_shards; i++) total += lq_st_count(m->shards[i]);
    named *all = calloc((size_t)total + 1, sizeof *all);
    m->t = calloc((size_t)total + 1, sizeof *m->t);
    m->shard_of = calloc((size_t)total + 1, sizeof *m->shard_of);
    if (!all || !m->t || !m->shard_of) {
        free(all);
        return LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory for %lld tensors", what, (long long)total);
    }
    int64_t k = 0;
    for (int64_t i = 0; i < m->n_shards; i++)
        for (int64_t j = 0; j < lq_st_count(m->shards[i]); j++) all[k++] = (named){lq_st_tensor_at(m->shards[i], j), i};
    qsort(all, (size_t)total, sizeof *all, cmp_named);
    lq_status s = LQ_OK;
    for (int64_t i = 0; i < total; i++) {
        if (i > 0 && strcmp(all[i - 1].t->name, all[i].t->name) == 0 && s == LQ_OK)
            s = LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s' is in two shards: %s and %s", what, all[i].t->name,
                       lq_st_path(m->shards[all[i - 1].shard]), lq_st_path(m->shards[all[i].shard]));
        m->t[i] = all[i].t;
        m->shard_of[i] = all[i].shard;
    }
    m->n = total;
    free(all);
    return s;
}

static int cmp_cstr(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

static bool plain_file_name(const char *s) {
    return *s && strchr(s, '/') == NULL && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

/* Parses the index, opens each distinct shard beside it, checks weight_map against them. */
static lq_status open_index(lq_st_model *m, const char *index_path, lq_err *err) {
    char *text = NULL;
    size_t len = 0;
    LQ_TRY(lq_io_read_file(index_path, ST_INDEX_MAX_BYTES, &text, &len, err));
    lq_status s = LQ_OK;
    cJSON *root = NULL;
    if (!lq_io_utf8_ok(text, len)) s = LQ_ERR(err, LQ_ERR_INPUT, "%s: not UTF-8 text", index_path);
    else if (!(root = cJSON_ParseWithLength(text, len)) || !cJSON_IsObject(root))
        s = LQ_ERR(err, LQ_ERR_INPUT, "%s: not a JSON object", index_path);
    const cJSON *wm = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    if (s == LQ_OK && !cJSON_IsObject(wm))
        s = LQ_ERR(err, LQ_ERR_INPUT, "%s: no \"weight_map\" object", index_path);
    int n_entries = s == LQ_OK ? cJSON_GetArraySize(wm) : 0;
    const char **shard_names = calloc((size_t)n_entries + 1, sizeof *shard_names);
    if (s == LQ_OK && !shard_names) s = LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", index_path);
    int64_t n_sh = 0;
    for (const cJSON *e = s == LQ_OK ? wm->child : NULL; e && s == LQ_OK; e = e->next) {
        if (!cJSON_IsString(e) || !plain_file_name(e->valuestring)) {
            s = LQ_ERR(err, LQ_ERR_INPUT, "%s: weight_map entry '%s': the shard must be a plain file name (string, no '/')",
                       index_path, e->string);
            break;
        }
        shard_names[n_sh++] = e->valuestring;
    }
    /* distinct shard names, sorted (sorting keeps a hostile index with millions of entries fast) */
    if (s == LQ_OK) {
        qsort(shard_names, (size_t)n_sh, sizeof *shard_names, cmp_cstr);
        int64_t k = 0;
        for (int64_t j = 0; j < n_sh; j++)
            if (k == 0 || strcmp(shard_names[k - 1], shard_names[j]) != 0) shard_names[k++] = shard_names[j];
        n_sh = k;
    }
    if (s == LQ_OK && n_sh == 0) s = LQ_ERR(err, LQ_ERR_INPUT, "%s: weight_map is empty", index_path);
    /* shards live in the index's folder */
    const char *slash = strrchr(index_path, '/');
    size_t dir_len = slash ? (size_t)(slash - index_path) + 1 : 0;
    if (s == LQ_OK) {
        m->shards = calloc((size_t)n_sh, sizeof *m->shards);
        if (!m->shards) s = LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", index_path);
    }
    for (int64_t j = 0; j < n_sh && s == LQ_OK; j++) {
        size_t cap = dir_len + strlen(shard_names[j]) + 1;
        char *p = malloc(cap);
        if (!p) {
            s = LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", index_path);
            break;
        }
        memcpy(p, index_path, dir_len);
        strcpy(p + dir_len, shard_names[j]);
        s = lq_st_open(&m->shards[j], p, err);
        free(p);
        if (s == LQ_OK) m->n_shards = j + 1;
    }
    if (s == LQ_OK) s = build_table(m, index_path, err);
    for (const cJSON *e = s == LQ_OK ? wm->child : NULL; e && s == LQ_OK; e = e->next) {
        int64_t i = find_index(m, e->string);
        const char **hit = bsearch(&e->valuestring, shard_names, (size_t)n_sh, sizeof *shard_names, cmp_cstr);
        if (i < 0 || !hit || m->shard_of[i] != hit - shard_names)
            s = LQ_ERR(err, LQ_ERR_INPUT, "%s: weight_map puts tensor '%s' in %s, which has no such tensor", index_path,
                       e->string, e->valuestring);
    }
    free(shard_names);
    cJSON_Delete(root);
    free(text);
    return s;
}

static bool is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static bool ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

lq_status lq_st_model_open(lq_st_model **out, const char *path, lq_err *err) {
    *out = NULL;
    if (!path) return LQ_ERR(err, LQ_ERR_ARG, "safetensors model: NULL path");
    lq_st_model *m = calloc(1, sizeof *m);
    if (!m) return LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", path);
    lq_status s = LQ_OK;
    char *joined = NULL;
    const char *target = path;
    bool index = ends_with(path, ".json");
    if (is_dir(path)) {
        size_t cap = strlen(path) + sizeof ST_INDEX_NAME + 2;
        joined = malloc(cap);
        if (!joined) s = LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", path);
        else {
            snprintf(joined, cap, "%s/%s", path, ST_INDEX_NAME);
            index = is_file(joined);
            if (!index) snprintf(joined, cap, "%s/%s", path, ST_SINGLE_NAME);
            if (!index && !is_file(joined))
                s = LQ_ERR(err, LQ_ERR_INPUT, "%s: folder has neither %s nor %s", path, ST_INDEX_NAME, ST_SINGLE_NAME);
            target = joined;
        }
    }
    if (s == LQ_OK && index) s = open_index(m, target, err);
    else if (s == LQ_OK) {
        m->shards = calloc(1, sizeof *m->shards);
        if (!m->shards) s = LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", path);
        else s = lq_st_open(&m->shards[0], target, err);
        if (s == LQ_OK) {
            m->n_shards = 1;
            s = build_table(m, target, err);
        }
    }
    free(joined);
    if (s != LQ_OK) {
        lq_st_model_close(m);
        return s;
    }
    *out = m;
    return LQ_OK;
}
