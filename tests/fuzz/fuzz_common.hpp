// Shared by the libFuzzer targets: a per-process scratch directory on tmpfs
// for the parsers that read files (safetensors is memory-mapped, checkpoints
// are directories), and the rule every target enforces: a bad input may
// throw dsv2::Error, nothing else.
#pragma once

#include <dsv2/core/error.hpp>

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

namespace dsv2::fuzz {

// $DSV2_FUZZ_SCRATCH (scripts/fuzz.sh sets it and removes it afterwards:
// libFuzzer's -max_total_time exit skips atexit), else a directory unique to
// the process under /dev/shm (no disk I/O per input) or the temp directory.
inline const std::filesystem::path& scratch_dir() {
    static const std::filesystem::path dir = [] {
        if (const char* env = std::getenv("DSV2_FUZZ_SCRATCH"); env != nullptr && *env != '\0') {
            std::filesystem::create_directories(env);
            return std::filesystem::path(env);
        }
        std::filesystem::path base = std::filesystem::exists("/dev/shm") ? std::filesystem::path("/dev/shm")
                                                                         : std::filesystem::temp_directory_path();
        auto d = base / ("dsv2-fuzz-" + std::to_string(::getpid()));
        std::filesystem::create_directories(d);
        // Removed at exit; a crash leaves it behind for inspection.
        std::atexit([] {
            std::error_code ec;
            std::filesystem::remove_all(scratch_dir(), ec);
        });
        return d;
    }();
    return dir;
}

inline std::filesystem::path write_file(const std::string& name, const std::uint8_t* data, std::size_t size) {
    const auto p = scratch_dir() / name;
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
    if (!out.good()) {
        std::fprintf(stderr, "fuzz: cannot write %s\n", p.c_str());
        std::abort();
    }
    return p;
}

// Runs `f`; a dsv2::Error is the expected answer to a bad input. Any other
// exception escapes and libFuzzer reports it as a crash (uncaught exception).
template <class F>
void expect_dsv2_errors_only(F&& f) {
    try {
        f();
    } catch (const dsv2::Error&) {
    }
}

// A property that must hold for every accepted input.
#define DSV2_FUZZ_ASSERT(cond)                                                          \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            std::fprintf(stderr, "fuzz: property failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
            std::abort();                                                               \
        }                                                                               \
    } while (0)

}  // namespace dsv2::fuzz
