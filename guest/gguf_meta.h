/* gguf_meta.h -- a strict, bounds-checked parser of GGUF headers.
 *
 * The parser reads the header once, validating every count, length and type
 * against the bytes that remain, and builds small index tables of offsets into
 * the header bytes.  Nothing is copied: strings and arrays (Gemma 3's 262,144
 * tokens included) are read in place, so the header lives in guest memory once.
 * The header may be a whole file or only its first data_offset bytes (what the
 * host's realm_get_metadata returns): tensor data is never read.
 */
#ifndef GGUF_META_H
#define GGUF_META_H

#include <stdint.h>

/* Metadata value types as numbered in GGUF files. */
enum gguf_type {
    GGUF_U8 = 0, GGUF_I8 = 1, GGUF_U16 = 2, GGUF_I16 = 3, GGUF_U32 = 4, GGUF_I32 = 5,
    GGUF_F32 = 6, GGUF_BOOL = 7, GGUF_STRING = 8, GGUF_ARRAY = 9, GGUF_U64 = 10,
    GGUF_I64 = 11, GGUF_F64 = 12,
    GGUF_TYPE_COUNT
};

#define GGUF_MAX_DIMS 4         /* ggml's GGML_MAX_DIMS */
#define GGUF_MAX_ELEMENTS (1ull << 59) /* of a tensor's non-zero dimensions (realm/reader.py's MAX_TENSOR_ELEMENTS) */
#define GGUF_MAX_ARRAY_DEPTH 8  /* arrays of arrays nested deeper are refused */

/* A string in the header: bytes [off, off + len), not NUL-terminated. */
struct gguf_str {
    uint32_t off;
    uint32_t len;
};

/* One metadata key/value.  `name` must stay the first member (see name_index). */
struct gguf_kv {
    struct gguf_str name;
    uint32_t type;      /* enum gguf_type */
    uint32_t arr_type;  /* element type when type == GGUF_ARRAY */
    uint64_t arr_n;     /* element count when type == GGUF_ARRAY */
    uint32_t val;       /* offset of the value; of the first element for arrays */
};

/* One tensor info.  `name` must stay the first member (see name_index). */
struct gguf_tensor {
    struct gguf_str name;
    uint32_t type;                /* ggml type id, as stored (the host validates it) */
    uint32_t n_dims;
    uint64_t ne[GGUF_MAX_DIMS];   /* ne[0] innermost (ggml order); unused dims are 1 */
    uint64_t n_elements;
    uint64_t offset;              /* from the start of tensor data */
};

/* An open-addressing hash table of names -> item index, for O(1) lookups and
 * duplicate detection; a file whose names collide past a bound is refused, so
 * a hostile one cannot make building it quadratic. */
struct name_index {
    uint32_t *slots;  /* item index + 1; 0 is empty */
    uint32_t mask;    /* slot count - 1 (a power of two) */
};

struct gguf_file {
    const uint8_t *data;  /* the header bytes; every offset in this struct is into them */
    uint32_t len;         /* bytes of header that are kept (min(data_offset, bytes given)) */
    uint32_t version;
    uint32_t alignment;
    uint32_t data_offset; /* start of tensor data in the file */
    uint32_t n_kv;
    uint32_t n_tensors;
    struct gguf_kv *kv;
    struct gguf_tensor *tensors;
    struct name_index kv_index;
    struct name_index tensor_index;
};

/* Parse len bytes at data.  Returns 0 (the file then points into data, which
 * must outlive it), or REALM_E_BAD_GGUF / REALM_E_NO_MEMORY with the reason
 * in gguf_error().  On failure nothing needs freeing. */
int gguf_parse(struct gguf_file *f, const uint8_t *data, uint32_t len);
void gguf_free(struct gguf_file *f);
const char *gguf_error(void);

/* Lookups; NULL when absent. */
const struct gguf_kv *gguf_find_kv(const struct gguf_file *f, const char *key, uint32_t key_len);
const struct gguf_tensor *gguf_find_tensor(const struct gguf_file *f, const char *name, uint32_t name_len);

/* Typed reads of a scalar value.  Each returns 1 when the key holds a value of
 * a fitting type, 0 when the key is absent, and REALM_E_BAD_GGUF (with the
 * reason in gguf_error()) when its type does not fit or the value is out of range. */
int gguf_get_u32(const struct gguf_file *f, const char *key, uint32_t *out);
int gguf_get_f32(const struct gguf_file *f, const char *key, float *out);
int gguf_get_bool(const struct gguf_file *f, const char *key, int32_t *out);
int gguf_get_str(const struct gguf_file *f, const char *key, struct gguf_str *out);

/* Element count of an array value: 1 and *n when present, 0 when absent,
 * REALM_E_BAD_GGUF when the key is not an array of elem_type. */
int gguf_get_array_len(const struct gguf_file *f, const char *key, uint32_t elem_type, uint64_t *n);

/* Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF. */
int gguf_utf8_valid(const uint8_t *s, uint32_t n);

/* Length of the UTF-8 character at s (n > 0 bytes), strict as above: k > 0
 * when valid, -k for a maximal invalid subpart of k bytes (Unicode's "best
 * practice" for U+FFFD). */
int gguf_utf8_char(const uint8_t *s, uint32_t n);

/* True when the string s equals the NUL-terminated lit. */
int gguf_str_eq(const struct gguf_file *f, struct gguf_str s, const char *lit);

/* Report a failure: format a message into gguf_error()'s buffer; returns code. */
int gguf_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif /* GGUF_META_H */
