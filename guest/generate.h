/* generate.h -- the generation loop (exports guest_generate_*, see realm_abi.h). */
#ifndef REALM_GENERATE_H
#define REALM_GENERATE_H

/* End any generation and free the tokenizer: guest.c calls it when its model goes. */
void generate_release(void);

#endif /* REALM_GENERATE_H */
