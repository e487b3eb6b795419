// Errors. Public entry points validate and throw one of these; messages say
// who complained, what was expected and what was found. Internals assert.
#pragma once

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <stdexcept>
#include <string>

namespace dsv2 {

struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};
// A config.json field is missing, malformed or out of range.
struct ConfigError : Error {
    using Error::Error;
};
// A checkpoint, safetensors or .npy file is malformed or does not match the config.
struct CheckpointError : Error {
    using Error::Error;
};
// Tensor or view shapes that do not fit together.
struct ShapeError : Error {
    using Error::Error;
};
// A request outside what the model or a cache can hold (token ids, positions, capacity).
struct RangeError : Error {
    using Error::Error;
};
// A CUDA runtime or library call failed.
struct CudaError : Error {
    using Error::Error;
};
// A valid request that this build or this component does not implement.
struct Unsupported : Error {
    using Error::Error;
};

namespace detail {
// Takes __FILE__/__LINE__ rather than std::source_location: clang 14 (the
// fuzzing compiler on Debian 12) cannot build libstdc++ 12's <source_location>.
template <class E>
[[noreturn]] inline void throw_at(const char* where_file, int where_line, const std::string& message) {
    std::string file = where_file;
    if (auto slash = file.rfind("include/dsv2/"); slash != std::string::npos) file = file.substr(slash + 8);
    throw E(fmt::format("{} ({}:{})", message, file, where_line));
}
}  // namespace detail

}  // namespace dsv2

// DSV2_CHECK(cond, ErrorType, "fmt {}", args...): throw ErrorType with the
// formatted message and the library location when `cond` is false.
#define DSV2_CHECK(cond, ErrorType, ...)                                                     \
    do {                                                                                     \
        if (!(cond)) [[unlikely]]                                                            \
            ::dsv2::detail::throw_at<ErrorType>(__FILE__, __LINE__, ::fmt::format(__VA_ARGS__)); \
    } while (0)

#define DSV2_FAIL(ErrorType, ...) \
    ::dsv2::detail::throw_at<ErrorType>(__FILE__, __LINE__, ::fmt::format(__VA_ARGS__))
