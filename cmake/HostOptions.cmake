# Options for code that runs on the host (everything except the freestanding
# guest). They live on an interface target rather than in CMAKE_CXX_FLAGS so that
# the guest kernel, which is built by the same project, never inherits sanitizers
# or host-only flags.
add_library(vmm_host_options INTERFACE)
target_compile_options(vmm_host_options INTERFACE
  -Wall -Wextra -Werror
  -Wnon-virtual-dtor -Wcast-qual -Wformat=2
  -fno-exceptions)
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
  # Abseil's headers trip GCC 12's -Wmaybe-uninitialized false positives at -O2.
  target_compile_options(vmm_host_options INTERFACE -Wno-maybe-uninitialized -Wshadow=local)
endif()
if(VMM_SANITIZE)
  target_compile_options(vmm_host_options INTERFACE
    -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
  target_link_options(vmm_host_options INTERFACE -fsanitize=address,undefined)
endif()
target_link_libraries(vmm_host_options INTERFACE Threads::Threads)

# vmm_library(NAME SOURCES... DEPS ...): one folder's library with the host options.
function(vmm_library name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS" ${ARGN})
  add_library(${name} STATIC ${ARG_SOURCES})
  target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR})
  target_link_libraries(${name} PUBLIC vmm_host_options ${ARG_DEPS})
endfunction()

# vmm_test(NAME SOURCES... DEPS ... [LABELS ...]): a GoogleTest binary registered
# with ctest, one ctest entry per test case.
function(vmm_test name)
  cmake_parse_arguments(ARG "" "TIMEOUT" "SOURCES;DEPS;LABELS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE vmm_host_options ${ARG_DEPS} GTest::gtest GTest::gtest_main
    GTest::gmock)
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 300)
  endif()
  gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60
    PROPERTIES TIMEOUT ${ARG_TIMEOUT} LABELS "${ARG_LABELS}")
endfunction()

# vmm_benchmark(NAME SOURCES... DEPS ...): a Google Benchmark binary (not a test).
function(vmm_benchmark name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE vmm_host_options ${ARG_DEPS} benchmark::benchmark)
endfunction()
