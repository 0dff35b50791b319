/* A tiny snprintf: %d %i %u %x %X %s %c %%, the 'l' length modifier, the '0' flag and a field width. */
#include "kiln.h"

struct out { char *buf; int size, n; };

static void put(struct out *o, char c)
{
        if (o->n < o->size - 1) o->buf[o->n] = c;
        o->n++;
}

static void put_num(struct out *o, u64 v, int base, bool upper, bool neg, int width, char pad)
{
        char tmp[24];
        int i = 0;
        const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
        do {
                tmp[i++] = digits[v % base];
                v /= base;
        } while (v);
        int len = i + (neg ? 1 : 0);
        if (neg && pad == '0') put(o, '-');
        for (; len < width; len++) put(o, pad);
        if (neg && pad != '0') put(o, '-');
        while (i) put(o, tmp[--i]);
}

int vformat(char *buf, int size, const char *f, va_list ap)
{
        struct out o = { buf, size, 0 };
        for (; *f; f++) {
                if (*f != '%') {
                        put(&o, *f);
                        continue;
                }
                f++;
                char pad = ' ';
                int width = 0, lng = 0;
                if (*f == '0') pad = '0', f++;
                while (*f >= '0' && *f <= '9') width = width * 10 + (*f++ - '0');
                while (*f == 'l') lng++, f++;
                switch (*f) {
                case 'd':
                case 'i': {
                        s64 v = lng ? va_arg(ap, s64) : va_arg(ap, int);
                        put_num(&o, v < 0 ? -(u64)v : (u64)v, 10, false, v < 0, width, pad);
                        break;
                }
                case 'u': put_num(&o, lng ? va_arg(ap, u64) : va_arg(ap, u32), 10, false, false, width, pad); break;
                case 'x': put_num(&o, lng ? va_arg(ap, u64) : va_arg(ap, u32), 16, false, false, width, pad); break;
                case 'X': put_num(&o, lng ? va_arg(ap, u64) : va_arg(ap, u32), 16, true, false, width, pad); break;
                case 'c': put(&o, (char)va_arg(ap, int)); break;
                case 's': {
                        const char *s = va_arg(ap, const char *);
                        if (!s) s = "(null)";
                        while (*s) put(&o, *s++);
                        break;
                }
                case '%': put(&o, '%'); break;
                case 0: f--; break;
                default: put(&o, '%'); put(&o, *f); break;
                }
        }
        if (size > 0) buf[o.n < size ? o.n : size - 1] = 0;
        return o.n < size ? o.n : size - 1;
}

int format(char *buf, int size, const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        int n = vformat(buf, size, fmt, ap);
        va_end(ap);
        return n;
}
