# Every dependency is a Debian package (scripts/setup installs them). Nothing is
# vendored. Each is exposed as an imported target that libraries link to.
find_package(Threads REQUIRED)
find_package(absl CONFIG REQUIRED)
find_package(GTest CONFIG REQUIRED)
find_package(benchmark CONFIG REQUIRED)
find_package(PkgConfig REQUIRED)
pkg_check_modules(XXHASH REQUIRED IMPORTED_TARGET libxxhash)
pkg_check_modules(JEMALLOC REQUIRED IMPORTED_TARGET jemalloc)
pkg_check_modules(URING REQUIRED IMPORTED_TARGET liburing)

# Optional outside peer for guest tests: QEMU under TCG.
find_program(QEMU_SYSTEM_X86_64 qemu-system-x86_64)
find_program(OBJDUMP_TOOL objdump)
find_package(nlohmann_json 3 REQUIRED)
