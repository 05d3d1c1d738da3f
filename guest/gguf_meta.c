/* gguf_meta.c -- a strict, bounds-checked GGUF header parser (see gguf_meta.h).
 *
 * The bytes are untrusted.  Every read goes through a cursor that checks what
 * remains first; every count is checked against the remaining bytes before it
 * sizes an allocation or a loop, so a hostile header costs at most O(its own
 * length) time and memory and gets REALM_E_BAD_GGUF with a reason.
 *
 * Layout of a GGUF file (all little-endian, as is wasm):
 *   "GGUF" u32 version  u64 n_tensors  u64 n_kv
 *   n_kv x      { string key; u32 type; value }
 *   n_tensors x { string name; u32 n_dims; u64 ne[n_dims]; u32 type; u64 offset }
 *   padding to general.alignment (default 32), then tensor data.
 * A string is u64 length + bytes; an array is u32 element type + u64 count +
 * elements (arrays may nest).
 */
#include "gguf_meta.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "realm_abi.h"

#define DEFAULT_ALIGNMENT 32
/* The fewest bytes a key/value and a tensor info can take; they bound the
 * counts in the preamble before anything is allocated from them. */
#define MIN_KV_BYTES (8 + 4 + 1)              /* key length, type, a u8 value */
#define MIN_TENSOR_BYTES (8 + 4 + 8 + 4 + 8)  /* name length, n_dims, one dim, type, offset */
#define MIN_ARRAY_BYTES (4 + 8)               /* element type, count */
#define SHOWN_NAME 48                         /* bytes of a key shown in an error message */

static const uint8_t scalar_size[GGUF_TYPE_COUNT] = {
    [GGUF_U8] = 1, [GGUF_I8] = 1, [GGUF_U16] = 2, [GGUF_I16] = 2, [GGUF_U32] = 4, [GGUF_I32] = 4,
    [GGUF_F32] = 4, [GGUF_BOOL] = 1, [GGUF_U64] = 8, [GGUF_I64] = 8, [GGUF_F64] = 8,
};

static const char *const type_name[GGUF_TYPE_COUNT] = {
    "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64",
};

/* ---- errors ------------------------------------------------------------------ */

static char error_message[256];

const char *gguf_error(void) { return error_message; }

int gguf_fail(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(error_message, sizeof error_message, fmt, ap);
    va_end(ap);
    return code;
}

/* ---- cursor: reads that never pass the end ----------------------------------- */

struct cursor {
    const uint8_t *data;
    uint32_t len;
    uint32_t pos;  /* invariant: pos <= len */
    struct gguf_str key;  /* the key being read, for error messages */
};

static uint32_t remaining(const struct cursor *c) { return c->len - c->pos; }

static int need(const struct cursor *c, uint64_t n, const char *what)
{
    if (n > remaining(c))
        return gguf_fail(REALM_E_BAD_GGUF, "truncated: %s at byte %u needs %llu bytes, %u remain",
                         what, c->pos, (unsigned long long)n, remaining(c));
    return 0;
}

static int read_u32(struct cursor *c, uint32_t *v, const char *what)
{
    int rc = need(c, 4, what);
    if (rc) return rc;
    memcpy(v, c->data + c->pos, 4);
    c->pos += 4;
    return 0;
}

static int read_u64(struct cursor *c, uint64_t *v, const char *what)
{
    int rc = need(c, 8, what);
    if (rc) return rc;
    memcpy(v, c->data + c->pos, 8);
    c->pos += 8;
    return 0;
}

static int read_str(struct cursor *c, struct gguf_str *s, const char *what)
{
    uint64_t n;
    int rc = read_u64(c, &n, what);
    if (rc || (rc = need(c, n, what))) return rc;
    s->off = c->pos;
    s->len = (uint32_t)n;  /* n <= remaining < 2^32 */
    c->pos += s->len;
    return 0;
}

int gguf_utf8_char(const uint8_t *s, uint32_t n)
{
    uint8_t b = s[0], lo = 0x80, hi = 0xBF;
    uint32_t need;
    if (b < 0x80) return 1;
    if (b >= 0xC2 && b <= 0xDF) need = 1;
    else if (b == 0xE0) need = 2, lo = 0xA0;
    else if (b >= 0xE1 && b <= 0xEF) need = 2, hi = b == 0xED ? 0x9F : 0xBF;
    else if (b == 0xF0) need = 3, lo = 0x90;
    else if (b >= 0xF1 && b <= 0xF3) need = 3;
    else if (b == 0xF4) need = 3, hi = 0x8F;
    else return -1;
    for (uint32_t i = 1; i <= need; i++, lo = 0x80, hi = 0xBF)
        if (i >= n || s[i] < lo || s[i] > hi) return -(int)i;
    return (int)need + 1;
}

int gguf_utf8_valid(const uint8_t *s, uint32_t n)
{
    for (uint32_t i = 0; i < n;) {
        int k = gguf_utf8_char(s + i, n - i);
        if (k < 0) return 0;
        i += (uint32_t)k;
    }
    return 1;
}

/* A key or tensor name: a string that must be UTF-8. */
static int read_name(struct cursor *c, struct gguf_str *s, const char *what)
{
    uint32_t at = c->pos;
    int rc = read_str(c, s, what);
    if (rc) return rc;
    if (!gguf_utf8_valid(c->data + s->off, s->len))
        return gguf_fail(REALM_E_BAD_GGUF, "%s at byte %u is not valid UTF-8", what, at);
    return 0;
}

/* ---- values ------------------------------------------------------------------ */

static int skip_array(struct cursor *c, uint32_t elem_type, uint64_t n, int depth);

#define KEY_FMT "'%.*s'"
#define KEY_ARG(c) (int)((c)->key.len < SHOWN_NAME ? (c)->key.len : SHOWN_NAME), (const char *)(c)->data + (c)->key.off

static int check_bools(const struct cursor *c, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        if (c->data[c->pos + i] > 1)
            return gguf_fail(REALM_E_BAD_GGUF, "metadata " KEY_FMT ": bool at byte %llu is %u, not 0 or 1",
                             KEY_ARG(c), (unsigned long long)(c->pos + i), c->data[c->pos + i]);
    return 0;
}

/* Step over one value of the given type. */
static int skip_value(struct cursor *c, uint32_t type, int depth)
{
    if (type >= GGUF_TYPE_COUNT)
        return gguf_fail(REALM_E_BAD_GGUF, "metadata " KEY_FMT ": unknown value type %u at byte %u",
                         KEY_ARG(c), type, c->pos);
    if (type == GGUF_STRING) {
        struct gguf_str s;
        return read_str(c, &s, "string value");
    }
    if (type == GGUF_ARRAY) {
        uint32_t elem_type;
        uint64_t n;
        int rc = read_u32(c, &elem_type, "array element type");
        if (rc || (rc = read_u64(c, &n, "array length"))) return rc;
        return skip_array(c, elem_type, n, depth + 1);
    }
    int rc = need(c, scalar_size[type], type_name[type]);
    if (rc || (type == GGUF_BOOL && (rc = check_bools(c, 1)))) return rc;
    c->pos += scalar_size[type];
    return 0;
}

static int array_too_long(const struct cursor *c, uint64_t n)
{
    return gguf_fail(REALM_E_BAD_GGUF, "truncated: metadata " KEY_FMT ": %llu array elements cannot fit in the %u bytes left",
                     KEY_ARG(c), (unsigned long long)n, remaining(c));
}

/* Step over n elements of elem_type.  Each element takes at least one byte,
 * and n is checked against what remains, so the loops are bounded by the
 * header's length. */
static int skip_array(struct cursor *c, uint32_t elem_type, uint64_t n, int depth)
{
    if (depth >= GGUF_MAX_ARRAY_DEPTH)
        return gguf_fail(REALM_E_BAD_GGUF, "metadata " KEY_FMT ": arrays nested deeper than %d levels",
                         KEY_ARG(c), GGUF_MAX_ARRAY_DEPTH);
    if (elem_type >= GGUF_TYPE_COUNT)
        return gguf_fail(REALM_E_BAD_GGUF, "metadata " KEY_FMT ": unknown array element type %u",
                         KEY_ARG(c), elem_type);
    if (elem_type != GGUF_STRING && elem_type != GGUF_ARRAY) {
        uint32_t size = scalar_size[elem_type];
        if (n > remaining(c) / size) return array_too_long(c, n);
        int rc = elem_type == GGUF_BOOL ? check_bools(c, n) : 0;
        if (rc) return rc;
        c->pos += (uint32_t)n * size;
        return 0;
    }
    uint32_t min_size = elem_type == GGUF_STRING ? 8 : MIN_ARRAY_BYTES;
    if (n > remaining(c) / min_size) return array_too_long(c, n);
    for (uint64_t i = 0; i < n; i++) {
        int rc = elem_type == GGUF_STRING ? skip_value(c, GGUF_STRING, depth)
                                          : skip_value(c, GGUF_ARRAY, depth);
        if (rc) return rc;
    }
    return 0;
}

/* ---- name index ---------------------------------------------------------------- */

/* The name of item i of an array of structs whose first member is a gguf_str. */
static const struct gguf_str *name_at(const void *items, size_t stride, uint32_t i)
{
    return (const struct gguf_str *)((const char *)items + (size_t)i * stride);
}

static uint32_t hash_name(const uint8_t *p, uint32_t n)
{
    uint32_t h = 2166136261u;  /* FNV-1a */
    for (uint32_t i = 0; i < n; i++) h = (h ^ p[i]) * 16777619u;
    return h;
}

static int name_equal(const uint8_t *data, struct gguf_str s, const uint8_t *name, uint32_t len)
{
    return s.len == len && memcmp(data + s.off, name, len) == 0;
}

/* Names are hashed with a fixed function, so a hostile file can choose names
 * whose slots collide and make each probe run long (quadratic building).
 * index_build refuses a name that would sit more than INDEX_MAX_PROBES slots
 * from its hash; so no lookup needs to look further.  Real files' runs are a
 * few slots long (the table is at most half full). */
#define INDEX_MAX_PROBES 1024u

static int64_t index_find(const struct name_index *ix, const uint8_t *data, const void *items,
                          size_t stride, const uint8_t *name, uint32_t len)
{
    uint32_t h = hash_name(name, len) & ix->mask;
    for (uint32_t probe = 0; probe < INDEX_MAX_PROBES; probe++, h = (h + 1) & ix->mask) {
        uint32_t slot = ix->slots[h];
        if (slot == 0) return -1;
        if (name_equal(data, *name_at(items, stride, slot - 1), name, len)) return slot - 1;
    }
    return -1;
}

/* Build the index of n named items, refusing duplicate names and names placed
 * INDEX_MAX_PROBES or more slots from their hash. */
static int index_build(struct name_index *ix, const uint8_t *data, const void *items, size_t stride,
                       uint32_t n, const char *what)
{
    uint32_t size = 8;
    while (size < 2 * n) size <<= 1;  /* n < 2^29 (bounded by the header length) */
    ix->slots = calloc(size, sizeof *ix->slots);
    if (!ix->slots) return gguf_fail(REALM_E_NO_MEMORY, "no memory for the %s index", what);
    ix->mask = size - 1;
    for (uint32_t i = 0; i < n; i++) {
        struct gguf_str s = *name_at(items, stride, i);
        const int duplicate = index_find(ix, data, items, stride, data + s.off, s.len) >= 0;
        uint32_t h = hash_name(data + s.off, s.len) & ix->mask, probe = 0;
        while (!duplicate && ix->slots[h] && probe < INDEX_MAX_PROBES - 1) {
            h = (h + 1) & ix->mask;
            probe++;
        }
        if (duplicate || ix->slots[h]) {
            free(ix->slots);
            ix->slots = NULL;
            return gguf_fail(REALM_E_BAD_GGUF, duplicate ? "duplicate %s '%.*s'" : "%s '%.*s' collides with too many names",
                             what, (int)(s.len < SHOWN_NAME ? s.len : SHOWN_NAME), (const char *)data + s.off);
        }
        ix->slots[h] = i + 1;
    }
    return 0;
}

/* ---- the header ---------------------------------------------------------------- */

static int parse_kvs(struct gguf_file *f, struct cursor *c)
{
    for (uint32_t i = 0; i < f->n_kv; i++) {
        struct gguf_kv *kv = &f->kv[i];
        int rc = read_name(c, &kv->name, "metadata key");
        if (rc) return rc;
        c->key = kv->name;
        if ((rc = read_u32(c, &kv->type, "value type"))) return rc;
        if (kv->type == GGUF_ARRAY) {
            if ((rc = read_u32(c, &kv->arr_type, "array element type")) ||
                (rc = read_u64(c, &kv->arr_n, "array length")))
                return rc;
            kv->val = c->pos;
            rc = skip_array(c, kv->arr_type, kv->arr_n, 0);
        } else {
            kv->val = c->pos;
            rc = skip_value(c, kv->type, 0);
        }
        if (rc) return rc;
    }
    return index_build(&f->kv_index, f->data, f->kv, sizeof *f->kv, f->n_kv, "metadata key");
}

static int parse_alignment(struct gguf_file *f)
{
    f->alignment = DEFAULT_ALIGNMENT;
    const struct gguf_kv *kv = gguf_find_kv(f, "general.alignment", sizeof "general.alignment" - 1);
    if (!kv) return 0;
    if (kv->type != GGUF_U32)
        return gguf_fail(REALM_E_BAD_GGUF, "general.alignment must be a u32, not %s",
                         kv->type < GGUF_TYPE_COUNT ? type_name[kv->type] : "?");
    memcpy(&f->alignment, f->data + kv->val, 4);
    if (f->alignment == 0 || (f->alignment & (f->alignment - 1)))
        return gguf_fail(REALM_E_BAD_GGUF, "general.alignment %u is not a power of two", f->alignment);
    return 0;
}

static int parse_tensor(struct gguf_file *f, struct cursor *c, struct gguf_tensor *t)
{
    int rc = read_name(c, &t->name, "tensor name");
    if (rc) return rc;
    const char *name = (const char *)f->data + t->name.off;
    int shown = (int)(t->name.len < SHOWN_NAME ? t->name.len : SHOWN_NAME);
    if ((rc = read_u32(c, &t->n_dims, "tensor dimension count"))) return rc;
    if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS)
        return gguf_fail(REALM_E_BAD_GGUF, "tensor '%.*s' has %u dimensions (1 to %d allowed)",
                         shown, name, t->n_dims, GGUF_MAX_DIMS);
    /* The product of the non-zero dimensions is bounded even when another one is 0: such a
     * tensor holds nothing, but its shape is real (the host refuses the same files). */
    int zero = 0;
    t->n_elements = 1;
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) {
        t->ne[d] = 1;
        if (d < t->n_dims && (rc = read_u64(c, &t->ne[d], "tensor dimension"))) return rc;
        if (t->ne[d] == 0) zero = 1;
        else if (t->ne[d] > GGUF_MAX_ELEMENTS / t->n_elements)
            return gguf_fail(REALM_E_BAD_GGUF, "tensor '%.*s' has absurd dimensions", shown, name);
        else t->n_elements *= t->ne[d];
    }
    if (zero) t->n_elements = 0;
    if ((rc = read_u32(c, &t->type, "tensor type")) || (rc = read_u64(c, &t->offset, "tensor offset")))
        return rc;
    if (t->offset % f->alignment)
        return gguf_fail(REALM_E_BAD_GGUF, "tensor '%.*s': data offset %llu is not a multiple of %u",
                         shown, name, (unsigned long long)t->offset, f->alignment);
    return 0;
}

int gguf_parse(struct gguf_file *f, const uint8_t *data, uint32_t len)
{
    memset(f, 0, sizeof *f);
    f->data = data;
    struct cursor c = {.data = data, .len = len};
    uint32_t magic;
    uint64_t n_tensors, n_kv;
    int rc = read_u32(&c, &magic, "magic");
    if (rc) return rc;
    if (memcmp(&magic, "GGUF", 4) != 0) return gguf_fail(REALM_E_BAD_GGUF, "not a GGUF file (bad magic)");
    if ((rc = read_u32(&c, &f->version, "version"))) return rc;
    if (f->version != 2 && f->version != 3)
        return gguf_fail(REALM_E_BAD_GGUF, "GGUF version %u is not supported (2 and 3 are)", f->version);
    if ((rc = read_u64(&c, &n_tensors, "tensor count")) || (rc = read_u64(&c, &n_kv, "metadata count")))
        return rc;
    if (n_kv > remaining(&c) / MIN_KV_BYTES || n_tensors > remaining(&c) / MIN_TENSOR_BYTES ||
        n_kv * MIN_KV_BYTES + n_tensors * MIN_TENSOR_BYTES > remaining(&c))
        return gguf_fail(REALM_E_BAD_GGUF, "truncated: %llu metadata entries and %llu tensors cannot fit in %u bytes",
                         (unsigned long long)n_kv, (unsigned long long)n_tensors, remaining(&c));
    f->n_kv = (uint32_t)n_kv;
    f->n_tensors = (uint32_t)n_tensors;
    f->kv = calloc(f->n_kv ? f->n_kv : 1, sizeof *f->kv);
    f->tensors = calloc(f->n_tensors ? f->n_tensors : 1, sizeof *f->tensors);
    if (!f->kv || !f->tensors) {
        gguf_free(f);
        return gguf_fail(REALM_E_NO_MEMORY, "no memory for %u keys and %u tensors", f->n_kv, f->n_tensors);
    }

    if ((rc = parse_kvs(f, &c)) || (rc = parse_alignment(f))) goto fail;
    for (uint32_t i = 0; i < f->n_tensors; i++)
        if ((rc = parse_tensor(f, &c, &f->tensors[i]))) goto fail;
    if ((rc = index_build(&f->tensor_index, f->data, f->tensors, sizeof *f->tensors, f->n_tensors, "tensor name")))
        goto fail;

    uint64_t data_offset = ((uint64_t)c.pos + f->alignment - 1) / f->alignment * f->alignment;
    if (data_offset > len && f->n_tensors) {
        rc = gguf_fail(REALM_E_BAD_GGUF, "truncated: tensor data would start at byte %llu, past the end (%u bytes)",
                       (unsigned long long)data_offset, len);
        goto fail;
    }
    f->data_offset = data_offset > len ? len : (uint32_t)data_offset;  /* clamped only without tensors */
    f->len = f->data_offset;
    return 0;
fail:
    gguf_free(f);
    return rc;
}

void gguf_free(struct gguf_file *f)
{
    free(f->kv);
    free(f->tensors);
    free(f->kv_index.slots);
    free(f->tensor_index.slots);
    memset(f, 0, sizeof *f);
}

/* ---- lookups and typed reads ---------------------------------------------------- */

const struct gguf_kv *gguf_find_kv(const struct gguf_file *f, const char *key, uint32_t key_len)
{
    if (!f->kv_index.slots) return NULL;
    int64_t i = index_find(&f->kv_index, f->data, f->kv, sizeof *f->kv, (const uint8_t *)key, key_len);
    return i < 0 ? NULL : &f->kv[i];
}

const struct gguf_tensor *gguf_find_tensor(const struct gguf_file *f, const char *name, uint32_t name_len)
{
    if (!f->tensor_index.slots) return NULL;
    int64_t i = index_find(&f->tensor_index, f->data, f->tensors, sizeof *f->tensors,
                           (const uint8_t *)name, name_len);
    return i < 0 ? NULL : &f->tensors[i];
}

static const struct gguf_kv *find(const struct gguf_file *f, const char *key)
{
    return gguf_find_kv(f, key, (uint32_t)strlen(key));
}

static int wrong_type(const char *key, const struct gguf_kv *kv, const char *expected)
{
    return gguf_fail(REALM_E_BAD_GGUF, "metadata '%s' has type %s, expected %s", key,
                     type_name[kv->type], expected);
}

/* Any integer value, as a signed 64-bit number (u64 above INT64_MAX is refused). */
static int read_integer(const struct gguf_file *f, const char *key, const struct gguf_kv *kv, int64_t *out)
{
    const uint8_t *p = f->data + kv->val;
    union { uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32; uint64_t u64; int64_t i64; } v;
    memcpy(&v, p, kv->type < GGUF_TYPE_COUNT && scalar_size[kv->type] ? scalar_size[kv->type] : 0);
    switch (kv->type) {
    case GGUF_U8: *out = v.u8; return 1;
    case GGUF_I8: *out = v.i8; return 1;
    case GGUF_U16: *out = v.u16; return 1;
    case GGUF_I16: *out = v.i16; return 1;
    case GGUF_U32: *out = v.u32; return 1;
    case GGUF_I32: *out = v.i32; return 1;
    case GGUF_I64: *out = v.i64; return 1;
    case GGUF_U64:
        if (v.u64 > INT64_MAX) return gguf_fail(REALM_E_BAD_GGUF, "metadata '%s' is out of range", key);
        *out = (int64_t)v.u64;
        return 1;
    default: return wrong_type(key, kv, "an integer");
    }
}

int gguf_get_u32(const struct gguf_file *f, const char *key, uint32_t *out)
{
    const struct gguf_kv *kv = find(f, key);
    int64_t v;
    if (!kv) return 0;
    int rc = read_integer(f, key, kv, &v);
    if (rc < 0) return rc;
    if (v < 0 || v > UINT32_MAX)
        return gguf_fail(REALM_E_BAD_GGUF, "metadata '%s' = %lld is out of range", key, (long long)v);
    *out = (uint32_t)v;
    return 1;
}

int gguf_get_f32(const struct gguf_file *f, const char *key, float *out)
{
    const struct gguf_kv *kv = find(f, key);
    if (!kv) return 0;
    if (kv->type == GGUF_F32) {
        memcpy(out, f->data + kv->val, 4);
        return 1;
    }
    if (kv->type == GGUF_F64) {
        double d;
        memcpy(&d, f->data + kv->val, 8);
        *out = (float)d;
        return 1;
    }
    int64_t v;
    int rc = read_integer(f, key, kv, &v);
    if (rc < 0) return wrong_type(key, kv, "a number");
    *out = (float)v;
    return 1;
}

int gguf_get_bool(const struct gguf_file *f, const char *key, int32_t *out)
{
    const struct gguf_kv *kv = find(f, key);
    if (!kv) return 0;
    if (kv->type != GGUF_BOOL) return wrong_type(key, kv, "a bool");
    *out = f->data[kv->val];  /* 0 or 1: checked by the parser */
    return 1;
}

int gguf_get_str(const struct gguf_file *f, const char *key, struct gguf_str *out)
{
    const struct gguf_kv *kv = find(f, key);
    if (!kv) return 0;
    if (kv->type != GGUF_STRING) return wrong_type(key, kv, "a string");
    uint64_t n;
    memcpy(&n, f->data + kv->val, 8);  /* validated by the parser: the bytes follow */
    out->off = kv->val + 8;
    out->len = (uint32_t)n;
    return 1;
}

int gguf_get_array_len(const struct gguf_file *f, const char *key, uint32_t elem_type, uint64_t *n)
{
    const struct gguf_kv *kv = find(f, key);
    if (!kv) return 0;
    if (kv->type != GGUF_ARRAY || kv->arr_type != elem_type)
        return gguf_fail(REALM_E_BAD_GGUF, "metadata '%s' is not an array of %s", key,
                         elem_type < GGUF_TYPE_COUNT ? type_name[elem_type] : "?");
    *n = kv->arr_n;
    return 1;
}

int gguf_str_eq(const struct gguf_file *f, struct gguf_str s, const char *lit)
{
    return name_equal(f->data, s, (const uint8_t *)lit, (uint32_t)strlen(lit));
}
