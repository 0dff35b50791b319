/* Freestanding string functions (gcc may also emit calls to memcpy/memset itself). */
#include "kiln.h"

void *memcpy(void *d, const void *s, size_t n)
{
        u8 *dp = d;
        const u8 *sp = s;
        while (n >= 8 && (((u64)dp | (u64)sp) & 7) == 0) {
                *(u64 *)dp = *(const u64 *)sp;
                dp += 8, sp += 8, n -= 8;
        }
        while (n--) *dp++ = *sp++;
        return d;
}

void *memmove(void *d, const void *s, size_t n)
{
        u8 *dp = d;
        const u8 *sp = s;
        if (dp <= sp || dp >= sp + n) return memcpy(d, s, n);
        while (n--) dp[n] = sp[n];
        return d;
}

void *memset(void *d, int c, size_t n)
{
        u8 *dp = d;
        u64 pat = 0x0101010101010101UL * (u8)c;
        while (n && ((u64)dp & 7)) *dp++ = (u8)c, n--;
        while (n >= 8) *(u64 *)dp = pat, dp += 8, n -= 8;
        while (n--) *dp++ = (u8)c;
        return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
        const u8 *x = a, *y = b;
        for (; n; n--, x++, y++)
                if (*x != *y) return *x < *y ? -1 : 1;
        return 0;
}

size_t strlen(const char *s)
{
        size_t n = 0;
        while (s[n]) n++;
        return n;
}

size_t strnlen(const char *s, size_t max)
{
        size_t n = 0;
        while (n < max && s[n]) n++;
        return n;
}
