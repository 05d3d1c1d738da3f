/* model_config.h -- struct realm_config from a parsed GGUF header. */
#ifndef MODEL_CONFIG_H
#define MODEL_CONFIG_H

#include "gguf_meta.h"
#include "realm_abi.h"

/* Fill c from f by the rules documented on struct realm_config (model_id is
 * left -1 for the caller).  Returns 0, or REALM_E_BAD_GGUF with the reason in
 * gguf_error() when a needed key is missing or has the wrong type. */
int config_from_gguf(struct realm_config *c, const struct gguf_file *f);

#endif /* MODEL_CONFIG_H */
