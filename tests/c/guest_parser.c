/* The guest's GGUF parser and config builder, built natively (the tests add
 * AddressSanitizer and UBSan where the compiler has them), run over every file
 * whose path is a line of stdin.  Each file is copied into a buffer of exactly
 * its size, so a read one byte past the end is caught -- inside wasm such a read
 * would not trap.  Prints "<rc> <path>" per file; exits 0 unless something crashed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf_meta.h"
#include "model_config.h"

static int check(const uint8_t *data, uint32_t len)
{
    struct gguf_file f;
    struct realm_config c;
    int rc = gguf_parse(&f, data, len);
    if (rc) return rc;
    rc = config_from_gguf(&c, &f);
    for (uint32_t i = 0; i < f.n_kv; i++) {  /* every name must be found again, at its own index */
        const struct gguf_kv *kv = &f.kv[i];
        if (gguf_find_kv(&f, (const char *)f.data + kv->name.off, kv->name.len) != kv) abort();
    }
    for (uint32_t i = 0; i < f.n_tensors; i++) {
        const struct gguf_tensor *t = &f.tensors[i];
        if (gguf_find_tensor(&f, (const char *)f.data + t->name.off, t->name.len) != t) abort();
    }
    gguf_free(&f);
    return rc;
}

int main(void)
{
    char path[4096];
    while (fgets(path, sizeof path, stdin)) {
        path[strcspn(path, "\n")] = 0;
        FILE *fp = fopen(path, "rb");
        if (!fp) { perror(path); return 2; }
        fseek(fp, 0, SEEK_END);
        long size = ftell(fp);
        fseek(fp, 0, SEEK_SET);
        uint8_t *buf = malloc(size ? (size_t)size : 1);
        if (!buf || fread(buf, 1, (size_t)size, fp) != (size_t)size) { perror(path); return 2; }
        fclose(fp);
        printf("%d %s\n", check(buf, (uint32_t)size), path);
        free(buf);
    }
    return 0;
}
