// NumPy .npy files (format versions 1-3, little-endian, C order): golden
// tensors for tests and the `dsv2 logits` output.
#pragma once

#include "dsv2/core/dtype.hpp"
#include "dsv2/core/error.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <span>
#include <string>
#include <vector>

namespace dsv2 {

struct NpyArray {
    std::string descr;                // e.g. "<f8", "<f4", "<i8"
    std::vector<std::int64_t> shape;  // () for a scalar
    std::vector<char> data;           // raw little-endian bytes

    std::int64_t numel() const {
        std::int64_t n = 1;
        for (auto s : shape) n *= s;
        return n;
    }

    // The values converted to V; throws for a dtype other than f8/f4/f2/i8/i4.
    template <class V>
    std::vector<V> as(std::string_view what = "array") const {
        std::vector<V> out(static_cast<std::size_t>(numel()));
        auto each = [&]<class S>(S) {
            for (std::size_t i = 0; i < out.size(); ++i) {
                S v;
                std::memcpy(&v, data.data() + i * sizeof(S), sizeof(S));
                if constexpr (std::is_floating_point_v<S> && std::is_integral_v<V>) {
                    // Casting NaN, Inf or an out-of-range float to an integer is undefined behaviour.
                    DSV2_CHECK(v == std::trunc(v) && v >= static_cast<S>(std::numeric_limits<V>::min()) &&
                                   v < -static_cast<S>(std::numeric_limits<V>::min()),
                               CheckpointError, "[npy] {}: element {} is {}, not an integer that fits int{}", what, i, v,
                               8 * sizeof(V));
                }
                out[i] = static_cast<V>(v);
            }
        };
        if (descr == "<f8") each(double{});
        else if (descr == "<f4") each(float{});
        else if (descr == "<i8") each(std::int64_t{});
        else if (descr == "<i4") each(std::int32_t{});
        else DSV2_FAIL(CheckpointError, "[npy] {}: unsupported dtype '{}' (expected <f8, <f4, <i8 or <i4)", what, descr);
        return out;
    }
};

namespace npy_detail {
template <class V>
constexpr const char* descr() {
    if constexpr (std::is_same_v<V, double>) return "<f8";
    else if constexpr (std::is_same_v<V, float>) return "<f4";
    else if constexpr (std::is_same_v<V, std::int64_t>) return "<i8";
    else if constexpr (std::is_same_v<V, std::int32_t>) return "<i4";
    else static_assert(sizeof(V) == 0, "npy: unsupported element type");
}
inline std::size_t item_size(const std::string& d) {
    if (d.size() == 3 && (d[0] == '<' || d[0] == '|') && (d[1] == 'f' || d[1] == 'i' || d[1] == 'u')) {
        const int s = d[2] - '0';
        if (s == 1 || s == 2 || s == 4 || s == 8) return static_cast<std::size_t>(s);
    }
    return 0;
}
// The value of 'key' in the header dict, as raw text up to the next top-level comma.
inline std::string field(const std::string& header, const std::string& key, const std::string& path) {
    const auto k = header.find("'" + key + "'");
    DSV2_CHECK(k != std::string::npos, CheckpointError, "[npy] {}: header has no '{}' field", path, key);
    auto colon = header.find(':', k);
    DSV2_CHECK(colon != std::string::npos, CheckpointError, "[npy] {}: malformed header near '{}'", path, key);
    std::size_t i = colon + 1, depth = 0;
    std::string out;
    for (; i < header.size(); ++i) {
        const char c = header[i];
        if (c == '(') ++depth;
        if (c == ')') {
            if (depth == 0) break;
            --depth;
        }
        if ((c == ',' || c == '}') && depth == 0) break;
        out += c;
    }
    const auto b = out.find_first_not_of(" \t"), e = out.find_last_not_of(" \t");
    return b == std::string::npos ? std::string() : out.substr(b, e - b + 1);
}
}  // namespace npy_detail

inline NpyArray parse_npy(std::span<const char> bytes, const std::string& path = "<memory>") {
    using namespace npy_detail;
    DSV2_CHECK(bytes.size() >= 10 && std::memcmp(bytes.data(), "\x93NUMPY", 6) == 0, CheckpointError,
               "[npy] {}: not an .npy file (bad magic)", path);
    const int major = static_cast<unsigned char>(bytes[6]);
    DSV2_CHECK(major >= 1 && major <= 3, CheckpointError, "[npy] {}: unsupported format version {}", path, major);
    std::size_t header_len = 0, offset = 0;
    if (major == 1) {
        header_len = static_cast<unsigned char>(bytes[8]) | (static_cast<std::size_t>(static_cast<unsigned char>(bytes[9])) << 8);
        offset = 10;
    } else {
        DSV2_CHECK(bytes.size() >= 12, CheckpointError, "[npy] {}: truncated header", path);
        for (int i = 0; i < 4; ++i) header_len |= static_cast<std::size_t>(static_cast<unsigned char>(bytes[8 + i])) << (8 * i);
        offset = 12;
    }
    DSV2_CHECK(header_len <= bytes.size() - offset, CheckpointError,
               "[npy] {}: header length {} runs past the end of the file ({} bytes)", path, header_len, bytes.size());
    const std::string header(bytes.data() + offset, header_len);
    NpyArray a;
    std::string descr = field(header, "descr", path);
    DSV2_CHECK(descr.size() >= 2 && (descr.front() == '\'' || descr.front() == '"'), CheckpointError,
               "[npy] {}: malformed descr {}", path, descr);
    a.descr = descr.substr(1, descr.size() - 2);
    const std::size_t item = item_size(a.descr);
    DSV2_CHECK(item > 0, CheckpointError, "[npy] {}: unsupported dtype '{}'", path, a.descr);
    DSV2_CHECK(field(header, "fortran_order", path) == "False", CheckpointError,
               "[npy] {}: Fortran-ordered arrays are not supported", path);
    std::string shape = field(header, "shape", path);
    DSV2_CHECK(shape.size() >= 2 && shape.front() == '(' && shape.back() == ')', CheckpointError,
               "[npy] {}: malformed shape {}", path, shape);
    shape = shape.substr(1, shape.size() - 2);
    std::int64_t numel = 1;
    std::size_t pos = 0;
    while (pos < shape.size()) {
        auto comma = shape.find(',', pos);
        std::string tok = shape.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
        pos = comma == std::string::npos ? shape.size() : comma + 1;
        const auto b = tok.find_first_not_of(' ');
        if (b == std::string::npos) continue;
        tok = tok.substr(b, tok.find_last_not_of(' ') - b + 1);
        DSV2_CHECK(!tok.empty() && tok.size() <= 15 && tok.find_first_not_of("0123456789") == std::string::npos,
                   CheckpointError, "[npy] {}: malformed shape entry '{}'", path, tok);
        const std::int64_t dim = std::stoll(tok);
        DSV2_CHECK(dim == 0 || numel <= (std::int64_t{1} << 40) / dim, CheckpointError, "[npy] {}: shape too large", path);
        numel *= dim;
        a.shape.push_back(dim);
    }
    const std::size_t data_bytes = static_cast<std::size_t>(numel) * item;
    const std::size_t begin = offset + header_len;
    DSV2_CHECK(bytes.size() - begin >= data_bytes, CheckpointError,
               "[npy] {}: expected {} data bytes for shape ({}), found {}", path, data_bytes,
               fmt::join(a.shape, ", "), bytes.size() - begin);
    a.data.assign(bytes.data() + begin, bytes.data() + begin + data_bytes);
    return a;
}

inline NpyArray read_npy(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    DSV2_CHECK(in.good(), CheckpointError, "[npy] {}: cannot open file", path.string());
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return parse_npy(bytes, path.string());
}

template <class V>
void write_npy(const std::filesystem::path& path, std::span<const V> values, const std::vector<std::int64_t>& shape) {
    std::int64_t n = 1;
    for (auto s : shape) n *= s;
    DSV2_CHECK(n == std::ssize(values), ShapeError, "[npy] {}: {} values for shape ({})", path.string(), values.size(),
               fmt::join(shape, ", "));
    std::string dims;
    for (auto s : shape) dims += std::to_string(s) + ", ";
    if (shape.size() > 1) dims.resize(dims.size() - 2);
    std::string header = fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': ({}), }}", npy_detail::descr<V>(), dims);
    const std::size_t total = 10 + header.size() + 1;
    header.append((64 - total % 64) % 64, ' ');
    header += '\n';
    std::ofstream out(path, std::ios::binary);
    DSV2_CHECK(out.good(), CheckpointError, "[npy] {}: cannot create file", path.string());
    const unsigned char preamble[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, static_cast<unsigned char>(header.size() & 0xff),
                                        static_cast<unsigned char>(header.size() >> 8)};
    out.write(reinterpret_cast<const char*>(preamble), 10);
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    out.write(reinterpret_cast<const char*>(values.data()), static_cast<std::streamsize>(values.size_bytes()));
    DSV2_CHECK(out.good(), CheckpointError, "[npy] {}: write failed", path.string());
}

}  // namespace dsv2
