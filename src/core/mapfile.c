// File mapping: weights are used in place from a read-only mapping.
#include "core/mapfile.h"

#include "core/error.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int peri_mapfile_open(peri_mapfile *f, const char *path, bool use_mmap) {
    memset(f, 0, sizeof *f);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return peri_fail(PERI_E_IO, "cannot open '%s': %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return peri_fail(PERI_E_IO, "'%s' is not a regular file", path);
    }
    f->size = (size_t)st.st_size;
    f->path = strdup(path);
    if (!f->path) { close(fd); return peri_fail(PERI_E_NOMEM, "out of memory"); }
    if (f->size == 0) {
        close(fd);
        f->data = (const unsigned char *)"";
        return PERI_OK;
    }
    if (use_mmap) {
        void *p = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p != MAP_FAILED) {
            close(fd);
            f->data = p;
            f->mapped = true;
            return PERI_OK;
        }
    }
    unsigned char *buf = malloc(f->size);
    if (!buf) {
        close(fd);
        free(f->path);
        f->path = NULL;
        return peri_fail(PERI_E_NOMEM, "cannot allocate %zu bytes to read '%s'", f->size, path);
    }
    size_t got = 0;
    while (got < f->size) {
        ssize_t r = read(fd, buf + got, f->size - got);
        if (r <= 0) {
            if (r < 0 && errno == EINTR) continue;
            close(fd);
            free(buf);
            free(f->path);
            f->path = NULL;
            return peri_fail(PERI_E_IO, "cannot read '%s' at offset %zu: %s", path, got,
                             r < 0 ? strerror(errno) : "unexpected end of file");
        }
        got += (size_t)r;
    }
    close(fd);
    f->data = buf;
    return PERI_OK;
}

int peri_mapfile_writable(peri_mapfile *f, size_t off, size_t len) {
    if (off > f->size || len > f->size - off) return peri_fail(PERI_E_ARG, "'%s': bytes %zu+%zu are outside the file", f->path, off, len);
    if (!f->mapped || len == 0) return PERI_OK;
    long pg = sysconf(_SC_PAGESIZE);
    size_t page = pg > 0 ? (size_t)pg : 4096;
    uintptr_t a = (uintptr_t)(f->data + off), lo = a / page * page, hi = (a + len + page - 1) / page * page;
    if (mprotect((void *)lo, hi - lo, PROT_READ | PROT_WRITE) != 0)
        return peri_fail(PERI_E_IO, "'%s': cannot make the mapping writable for repacking (%s); load with use_mmap "
                         "off or without repacking (--no-repack)", f->path, strerror(errno));
    return PERI_OK;
}

void peri_mapfile_close(peri_mapfile *f) {
    if (!f) return;
    if (f->mapped) munmap((void *)f->data, f->size);
    else if (f->size) free((void *)f->data);
    free(f->path);
    memset(f, 0, sizeof *f);
}

int peri_read_file(const char *path, size_t max_size, char **out, size_t *out_len) {
    *out = NULL;
    FILE *fp = fopen(path, "rb");
    if (!fp) return peri_fail(PERI_E_IO, "cannot open '%s': %s", path, strerror(errno));
    if (fseek(fp, 0, SEEK_END) != 0) { fclose(fp); return peri_fail(PERI_E_IO, "cannot seek in '%s'", path); }
    long n = ftell(fp);
    if (n < 0) { fclose(fp); return peri_fail(PERI_E_IO, "cannot size '%s'", path); }
    if ((size_t)n > max_size) {
        fclose(fp);
        return peri_fail(PERI_E_FORMAT, "'%s' is %ld bytes, more than the %zu allowed for this kind of file", path, n, max_size);
    }
    fseek(fp, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (!buf) { fclose(fp); return peri_fail(PERI_E_NOMEM, "out of memory reading '%s'", path); }
    size_t got = fread(buf, 1, (size_t)n, fp);
    fclose(fp);
    if (got != (size_t)n) { free(buf); return peri_fail(PERI_E_IO, "short read on '%s'", path); }
    buf[n] = 0;
    *out = buf;
    if (out_len) *out_len = (size_t)n;
    return PERI_OK;
}
