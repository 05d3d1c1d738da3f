/* unicode.h -- the UTF-8 and codepoint-class primitives the tokenizers share.
 *
 * Everything here reproduces llama.cpp's unicode.cpp behaviour, including its
 * lenient UTF-8 decoder, because token ids must come out identical:
 *   - a byte that cannot start a sequence, or a sequence cut short by the end
 *     of the text or by a non-continuation byte, decodes to U+FFFD and
 *     consumes ONE byte;
 *   - overlong forms and surrogates are accepted as the codepoint they spell
 *     (C1 81 is 'A', ED A0 80 is U+D800), and F5..F7 leads give codepoints up
 *     to 0x1FFFFF.  llama.cpp throws on re-encoding those above U+10FFFF; the
 *     guest re-encodes them as U+FFFD instead (see unicode_encode_utf8).
 */
#ifndef REALM_UNICODE_H
#define REALM_UNICODE_H

#include <stdint.h>

/* Codepoint class flags: llama.cpp's unicode_cpt_flags bit values. */
enum {
    UCF_UNDEFINED   = 0x0001,  /* unassigned codepoint, or >= 0x110000 */
    UCF_NUMBER      = 0x0002,  /* \p{N} */
    UCF_LETTER      = 0x0004,  /* \p{L} */
    UCF_SEPARATOR   = 0x0008,  /* \p{Z} */
    UCF_ACCENT_MARK = 0x0010,  /* \p{M} */
    UCF_PUNCTUATION = 0x0020,  /* \p{P} */
    UCF_SYMBOL      = 0x0040,  /* \p{S} */
    UCF_CONTROL     = 0x0080,  /* \p{C} */
    UCF_WHITESPACE  = 0x0100,  /* \s (the White_Space property) */
};

/* The class flags of a codepoint (one category flag, plus UCF_WHITESPACE). */
uint16_t unicode_flags(uint32_t cpt);

/* Byte length of the UTF-8 sequence a lead byte announces (1 for continuation
 * and invalid bytes), as llama.cpp's unicode_len_utf8. */
static inline uint32_t unicode_len_utf8(uint8_t lead)
{
    static const uint8_t len[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return len[lead >> 4];
}

/* Decode the codepoint at s[pos] (pos < end) with the lenient rules above;
 * returns the position after it (always > pos, never > end). */
uint32_t unicode_decode_utf8(const uint8_t *s, uint32_t pos, uint32_t end, uint32_t *cpt);

/* Encode cpt as UTF-8 into out (room for 4 bytes); returns the byte count.
 * Codepoints above U+10FFFF are encoded as U+FFFD. */
uint32_t unicode_encode_utf8(uint32_t cpt, uint8_t *out);

/* GPT-2's byte-level BPE alphabet: each byte value is represented by one
 * printable codepoint (the printable Latin-1 bytes stand for themselves, the
 * others map to U+0100..U+0143 in order).  Returns the UTF-8 length (1 or 2). */
uint32_t unicode_byte_to_utf8(uint8_t byte, uint8_t out[2]);

/* The byte a codepoint of that alphabet stands for, or -1. */
int unicode_utf8_to_byte(uint32_t cpt);

#endif /* REALM_UNICODE_H */
