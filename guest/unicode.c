/* unicode.c -- codepoint classes, lenient UTF-8, GPT-2's byte alphabet.
 * See unicode.h for the exact rules (they are llama.cpp's). */
#include "unicode.h"

#include "unicode_tables.h"

uint16_t unicode_flags(uint32_t cpt)
{
    if (cpt < 128) return unicode_ascii_flags[cpt];  /* most text: a direct table */
    if (cpt >= 0x110000) return UCF_UNDEFINED;
    /* last range whose start <= cpt (unicode_ranges[0] starts at 0) */
    uint32_t lo = 0, hi = UNICODE_N_RANGES;
    while (hi - lo > 1) {
        uint32_t mid = lo + (hi - lo) / 2;
        if ((unicode_ranges[mid] >> 8) <= cpt) lo = mid;
        else hi = mid;
    }
    uint16_t f = (uint16_t)(unicode_ranges[lo] & 0xFF);
    if (cpt <= 0x3000)
        for (uint32_t i = 0; i < UNICODE_N_WHITESPACE; i++)
            if (unicode_whitespace[i] == cpt) return f | UCF_WHITESPACE;
    return f;
}

uint32_t unicode_decode_utf8(const uint8_t *s, uint32_t pos, uint32_t end, uint32_t *cpt)
{
    uint8_t b0 = s[pos];
    if (!(b0 & 0x80)) { *cpt = b0; return pos + 1; }
    uint32_t n;
    if (!(b0 & 0x40)) n = 0;            /* continuation byte as a lead */
    else if (!(b0 & 0x20)) n = 2;
    else if (!(b0 & 0x10)) n = 3;
    else if (!(b0 & 0x08)) n = 4;
    else n = 0;                         /* F8..FF */
    if (n == 0 || end - pos < n) { *cpt = 0xFFFD; return pos + 1; }
    for (uint32_t i = 1; i < n; i++)
        if ((s[pos + i] & 0xC0) != 0x80) { *cpt = 0xFFFD; return pos + 1; }
    uint32_t c;
    if (n == 2) c = ((uint32_t)(b0 & 0x1F) << 6) | (s[pos + 1] & 0x3F);
    else if (n == 3) c = ((uint32_t)(b0 & 0x0F) << 12) | ((uint32_t)(s[pos + 1] & 0x3F) << 6) | (s[pos + 2] & 0x3F);
    else c = ((uint32_t)(b0 & 0x07) << 18) | ((uint32_t)(s[pos + 1] & 0x3F) << 12) |
             ((uint32_t)(s[pos + 2] & 0x3F) << 6) | (s[pos + 3] & 0x3F);
    *cpt = c;
    return pos + n;
}

uint32_t unicode_encode_utf8(uint32_t cpt, uint8_t *out)
{
    if (cpt <= 0x7F) { out[0] = (uint8_t)cpt; return 1; }
    if (cpt <= 0x7FF) {
        out[0] = (uint8_t)(0xC0 | (cpt >> 6));
        out[1] = (uint8_t)(0x80 | (cpt & 0x3F));
        return 2;
    }
    if (cpt > 0x10FFFF) cpt = 0xFFFD;
    if (cpt <= 0xFFFF) {
        out[0] = (uint8_t)(0xE0 | (cpt >> 12));
        out[1] = (uint8_t)(0x80 | ((cpt >> 6) & 0x3F));
        out[2] = (uint8_t)(0x80 | (cpt & 0x3F));
        return 3;
    }
    out[0] = (uint8_t)(0xF0 | (cpt >> 18));
    out[1] = (uint8_t)(0x80 | ((cpt >> 12) & 0x3F));
    out[2] = (uint8_t)(0x80 | ((cpt >> 6) & 0x3F));
    out[3] = (uint8_t)(0x80 | (cpt & 0x3F));
    return 4;
}

/* GPT-2's alphabet: the printable bytes ('!'..'~', 0xA1..0xAC, 0xAE..0xFF) stand
 * for themselves; the other 68 (0x00..0x20, 0x7F..0xA0, 0xAD), in increasing
 * order, map to U+0100 + their rank. */
static uint32_t byte_to_cpt(uint32_t b)
{
    if (b <= 0x20) return 0x100 + b;
    if (b >= 0x7F && b <= 0xA0) return 0x100 + 33 + (b - 0x7F);
    if (b == 0xAD) return 0x100 + 67;
    return b;
}

uint32_t unicode_byte_to_utf8(uint8_t byte, uint8_t out[2])
{
    uint32_t cpt = byte_to_cpt(byte);
    if (cpt < 0x80) { out[0] = (uint8_t)cpt; return 1; }
    out[0] = (uint8_t)(0xC0 | (cpt >> 6));
    out[1] = (uint8_t)(0x80 | (cpt & 0x3F));
    return 2;
}

int unicode_utf8_to_byte(uint32_t cpt)
{
    if (cpt < 0x100) return byte_to_cpt(cpt) == cpt ? (int)cpt : -1;
    uint32_t rank = cpt - 0x100;
    if (rank <= 32) return (int)rank;
    if (rank <= 66) return (int)(0x7F + rank - 33);
    if (rank == 67) return 0xAD;
    return -1;
}
