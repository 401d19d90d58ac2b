// A whole file, memory-mapped read-only (or read into memory when mmap is off or impossible).
#ifndef PERI_CORE_MAPFILE_H
#define PERI_CORE_MAPFILE_H

#include <stdbool.h>
#include <stddef.h>

typedef struct peri_mapfile {
    const unsigned char *data;
    size_t size;
    bool mapped;   // true: munmap on close; false: free
    char *path;
} peri_mapfile;

// Returns PERI_OK or PERI_E_IO with a message naming the path and the OS error.
int peri_mapfile_open(peri_mapfile *f, const char *path, bool use_mmap);
void peri_mapfile_close(peri_mapfile *f);
// Makes bytes [off, off + len) of the data writable: a mapping becomes copy-on-write there (the file is never
// written; the pages written become the process's own). Returns PERI_OK or PERI_E_IO.
int peri_mapfile_writable(peri_mapfile *f, size_t off, size_t len);

// Reads a whole (small) file into a NUL-terminated malloc'd buffer; max_size bounds it.
int peri_read_file(const char *path, size_t max_size, char **out, size_t *out_len);

#endif
