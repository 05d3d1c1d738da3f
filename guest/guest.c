/* guest.c -- the realm guest's exports: models, config and tensors.
 *
 * The guest holds one model at a time: its host id, its GGUF header (kept
 * once, in guest memory: metadata and tensor infos, never weights) and the
 * configuration parsed from it.  Everything heavy stays in the host behind
 * the realm_* imports declared in realm_abi.h.
 */
#include <stdlib.h>
#include <string.h>

#include "generate.h"
#include "gguf_meta.h"
#include "model_config.h"
#include "realm_abi.h"
#include "vocab.h"

struct model {
    int64_t id;              /* host model id; -1 when the guest holds none */
    int owned;               /* stored by this guest: removed from the host on release */
    uint8_t *header;         /* malloc'd header bytes; gguf and config index into them */
    struct gguf_file gguf;
    struct realm_config config;
};

static struct model current = {.id = -1};

/* ---- helpers ------------------------------------------------------------------- */

void log_message(int32_t level, const char *prefix, const char *msg)
{
    char line[320];
    size_t n = strlen(prefix), m = strlen(msg);
    if (n > sizeof line) n = sizeof line;
    if (m > sizeof line - n) m = sizeof line - n;
    memcpy(line, prefix, n);
    memcpy(line + n, msg, m);
    realm_log(level, line, (uint32_t)(n + m));
}

/* Parse a header and build its config into m.  On success m owns header (a
 * malloc'd buffer holding at least the header's bytes); on failure header is
 * freed and the reason logged. */
static int model_open(struct model *m, uint8_t *header, uint32_t len)
{
    memset(m, 0, sizeof *m);
    m->id = -1;
    m->header = header;
    int rc = gguf_parse(&m->gguf, header, len);
    if (rc == 0) rc = config_from_gguf(&m->config, &m->gguf);
    if (rc < 0) {
        log_message(REALM_LOG_ERROR, "gguf: ", gguf_error());
        gguf_free(&m->gguf);
        free(header);
        m->header = NULL;
    }
    return rc;
}

static void model_close(struct model *m)
{
    gguf_free(&m->gguf);
    free(m->header);
    memset(m, 0, sizeof *m);
    m->id = -1;
}

/* Check the host's view of model id against the header in m, then make m the
 * current model, releasing the previous one.  On failure m is closed. */
static int model_install(struct model *m, int64_t id, int owned)
{
    uint32_t n_tensors;
    int32_t rc = realm_get_model_info(id, &n_tensors, &m->config.total_size);
    if (rc == REALM_OK && n_tensors != m->gguf.n_tensors) {
        log_message(REALM_LOG_ERROR, "guest: ", "the host's tensor count differs from the header's");
        rc = REALM_E_INTERNAL;
    }
    if (rc < 0) {
        model_close(m);
        return rc;
    }
    guest_unload_model();
    m->id = m->config.model_id = id;
    m->owned = owned;
    current = *m;
    return REALM_OK;
}

/* ---- exports --------------------------------------------------------------------- */

uint32_t guest_abi_version(void) { return REALM_ABI_VERSION; }

void *guest_alloc(uint32_t size) { return malloc(size ? size : 1); }

void guest_free(void *ptr) { free(ptr); }

int64_t guest_load_model(const void *gguf, uint32_t len)
{
    /* Parse in place first (the file may be far larger than its header), then
     * keep a copy of the header bytes only. */
    struct gguf_file probe;
    int rc = gguf_parse(&probe, gguf, len);
    if (rc < 0) {
        log_message(REALM_LOG_ERROR, "gguf: ", gguf_error());
        return rc;
    }
    uint32_t header_len = probe.len;
    gguf_free(&probe);

    uint8_t *header = malloc(header_len ? header_len : 1);
    if (!header) return REALM_E_NO_MEMORY;
    memcpy(header, gguf, header_len);
    struct model m;
    if ((rc = model_open(&m, header, header_len)) < 0) return rc;

    int64_t id = realm_store_model(gguf, len);
    if (id < 0) {
        model_close(&m);
        return id;
    }
    if ((rc = model_install(&m, id, 1)) < 0) {
        realm_remove_model(id);
        return rc;
    }
    return id;
}

int32_t guest_attach_model(int64_t model_id)
{
    int32_t len = realm_get_metadata(model_id, NULL, 0);  /* the size of the header */
    if (len < 0) return len;
    uint8_t *header = malloc(len ? (uint32_t)len : 1);
    if (!header) return REALM_E_NO_MEMORY;
    int32_t got = realm_get_metadata(model_id, header, (uint32_t)len);
    if (got != len) {
        free(header);
        return got < 0 ? got : REALM_E_INTERNAL;
    }
    struct model m;
    int rc = model_open(&m, header, (uint32_t)len);
    if (rc < 0) return rc;
    return model_install(&m, model_id, 0);
}

int32_t guest_unload_model(void)
{
    if (current.id < 0) return REALM_E_NO_MODEL;
    generate_release();  /* the tokenizer reads the header: it goes first */
    int32_t rc = current.owned ? realm_remove_model(current.id) : REALM_OK;
    model_close(&current);
    return rc;
}

const struct realm_config *guest_config(void)
{
    return current.id < 0 ? NULL : &current.config;
}

const struct gguf_file *guest_current_gguf(void)
{
    return current.id < 0 ? NULL : &current.gguf;
}

int32_t guest_fetch_tensor(const char *name, uint32_t name_len, float *out, uint32_t out_max_len)
{
    if (current.id < 0) return REALM_E_NO_MODEL;
    const struct gguf_tensor *t = gguf_find_tensor(&current.gguf, name, name_len);
    if (!t) return REALM_E_NO_TENSOR;
    if (t->n_elements > INT32_MAX / sizeof(float)) return REALM_E_TOO_LARGE;
    uint32_t need = (uint32_t)t->n_elements * sizeof(float);
    if (out_max_len == 0) return (int32_t)need;
    if (out_max_len < need) return REALM_E_BUFFER_TOO_SMALL;
    int32_t rc = realm_get_tensor(current.id, name, name_len, out, out_max_len);
    if (rc >= 0 && (uint32_t)rc != need) {
        log_message(REALM_LOG_ERROR, "guest: ", "the host's tensor size differs from the header's");
        return REALM_E_INTERNAL;
    }
    return rc;
}
