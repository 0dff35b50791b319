/*
 * Command line: space-separated tokens `key=value` or bare `key`; unknown keys are ignored; the first
 * occurrence of a key wins.  Numbers are decimal or 0x-hex; sizes take a K, M, G or T suffix (powers of 1024).
 */
#include "kiln.h"

static bool find(const char *key, const char **val, int *len, bool *has_value)
{
        size_t klen = strlen(key);
        const char *p = boot.cmdline;
        while (*p) {
                while (*p == ' ' || *p == '\t') p++;
                const char *tok = p;
                while (*p && *p != ' ' && *p != '\t') p++;
                int tlen = (int)(p - tok);
                if (tlen >= (int)klen && memcmp(tok, key, klen) == 0 && (tlen == (int)klen || tok[klen] == '=')) {
                        *has_value = tlen > (int)klen;
                        *val = *has_value ? tok + klen + 1 : tok + klen;
                        *len = *has_value ? tlen - (int)klen - 1 : 0;
                        return true;
                }
        }
        return false;
}

bool cmdline_has(const char *key)
{
        const char *v;
        int l;
        bool hv;
        return find(key, &v, &l, &hv);
}

bool cmdline_str(const char *key, const char **val, int *len)
{
        bool hv;
        return find(key, val, len, &hv) && hv;
}

bool cmdline_is(const char *key, const char *value)
{
        const char *v;
        int l;
        return cmdline_str(key, &v, &l) && l == (int)strlen(value) && memcmp(v, value, l) == 0;
}

bool parse_u64(const char *s, int len, u64 *out)
{
        u64 v = 0;
        int i = 0, base = 10;
        if (len > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) base = 16, i = 2;
        if (i >= len) return false;
        for (; i < len; i++) {
                char c = s[i];
                int d;
                if (c >= '0' && c <= '9') d = c - '0';
                else if (base == 16 && c >= 'a' && c <= 'f') d = c - 'a' + 10;
                else if (base == 16 && c >= 'A' && c <= 'F') d = c - 'A' + 10;
                else return false;
                v = v * base + d;
        }
        *out = v;
        return true;
}

bool parse_size(const char *s, int len, u64 *out)
{
        int shift = 0;
        if (len > 0) {
                switch (s[len - 1]) {
                case 'k': case 'K': shift = 10; break;
                case 'm': case 'M': shift = 20; break;
                case 'g': case 'G': shift = 30; break;
                case 't': case 'T': shift = 40; break;
                }
                if (shift) len--;
        }
        u64 v;
        if (!parse_u64(s, len, &v)) return false;
        *out = v << shift;
        return true;
}

u64 cmdline_u64(const char *key, u64 dflt)
{
        const char *v;
        int l;
        u64 r;
        if (cmdline_str(key, &v, &l) && parse_u64(v, l, &r)) return r;
        return dflt;
}
