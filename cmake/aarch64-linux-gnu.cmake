# Cross-compiling for ARM64 (NEON kernels) with Debian's gcc-aarch64-linux-gnu; tests run under
# qemu-aarch64-static (apt: gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static).
#   cmake -S . -B build-arm64 -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64-static -L /usr/aarch64-linux-gnu)
# gcc 12.2 for aarch64 crashes (internal compiler error in vect_transform_reduction) on fmax reductions the
# auto-vectorizer meets in several files; the NEON kernels are intrinsics and do not need it.
set(CMAKE_C_FLAGS_INIT "-fno-tree-vectorize")
