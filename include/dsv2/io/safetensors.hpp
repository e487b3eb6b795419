// safetensors files: an 8-byte little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets}}, then the raw data. The reader
// memory-maps the file and validates the whole header before anything is
// used: lengths, dtypes, shapes, offsets inside the data section, sizes that
// match shapes, no two tensors overlapping. The writer is for tests and tools.
#pragma once

#include "dsv2/core/dtype.hpp"
#include "dsv2/core/error.hpp"

#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <span>
#include <string>
#include <vector>

namespace dsv2 {

enum class StDType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };

inline std::size_t st_item_size(StDType d) {
    switch (d) {
        case StDType::F64: case StDType::I64: return 8;
        case StDType::F32: case StDType::I32: return 4;
        case StDType::F16: case StDType::BF16: case StDType::I16: return 2;
        default: return 1;
    }
}
inline std::string_view st_name(StDType d) {
    constexpr std::string_view names[] = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"};
    return names[static_cast<int>(d)];
}
inline bool st_is_float(StDType d) { return d == StDType::F64 || d == StDType::F32 || d == StDType::F16 || d == StDType::BF16; }

struct StTensor {
    std::string name;
    StDType dtype = StDType::F32;
    std::vector<std::int64_t> shape;
    std::size_t begin = 0, end = 0;  // byte offsets into the data section
    std::int64_t numel() const {
        std::int64_t n = 1;
        for (auto s : shape) n *= s;
        return n;
    }
};

class SafetensorsFile {
public:
    explicit SafetensorsFile(const std::filesystem::path& path) : path_(path) {
        const std::string p = path.string();
        fd_ = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
        DSV2_CHECK(fd_ >= 0, CheckpointError, "[safetensors] {}: cannot open file: {}", p, std::strerror(errno));
        try {
            struct stat st {};
            DSV2_CHECK(::fstat(fd_, &st) == 0, CheckpointError, "[safetensors] {}: cannot stat file", p);
            size_ = static_cast<std::size_t>(st.st_size);
            DSV2_CHECK(size_ >= 8, CheckpointError, "[safetensors] {}: file is {} bytes, shorter than the 8-byte header length",
                       p, size_);
            map_ = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd_, 0);
            DSV2_CHECK(map_ != MAP_FAILED, CheckpointError, "[safetensors] {}: mmap failed: {}", p, std::strerror(errno));
            parse();
        } catch (...) {
            close();
            throw;
        }
    }
    SafetensorsFile(const SafetensorsFile&) = delete;
    SafetensorsFile& operator=(const SafetensorsFile&) = delete;
    SafetensorsFile(SafetensorsFile&& o) noexcept { *this = std::move(o); }
    SafetensorsFile& operator=(SafetensorsFile&& o) noexcept {
        if (this != &o) {
            close();
            path_ = std::move(o.path_);
            tensors_ = std::move(o.tensors_);
            metadata_ = std::move(o.metadata_);
            fd_ = std::exchange(o.fd_, -1);
            map_ = std::exchange(o.map_, MAP_FAILED);
            size_ = o.size_;
            data_ = o.data_;
        }
        return *this;
    }
    ~SafetensorsFile() { close(); }

    const std::filesystem::path& path() const { return path_; }
    const std::map<std::string, StTensor>& tensors() const { return tensors_; }
    const std::map<std::string, std::string>& metadata() const { return metadata_; }
    const StTensor* find(const std::string& name) const {
        auto it = tensors_.find(name);
        return it == tensors_.end() ? nullptr : &it->second;
    }
    std::span<const char> bytes(const StTensor& t) const {
        return {static_cast<const char*>(map_) + data_ + t.begin, t.end - t.begin};
    }

    // Converts a floating-point tensor to V (float, double, bf16 or f16).
    template <class V>
    void read(const StTensor& t, V* out) const {
        DSV2_CHECK(st_is_float(t.dtype), CheckpointError, "[safetensors] {} in {}: dtype {} is not a floating-point type",
                   t.name, path_.filename().string(), st_name(t.dtype));
        const char* src = bytes(t).data();
        const std::int64_t n = t.numel();
        auto each = [&]<class S>(S) {
            for (std::int64_t i = 0; i < n; ++i) {
                S v;
                std::memcpy(&v, src + i * static_cast<std::int64_t>(sizeof(S)), sizeof(S));
                if constexpr (std::is_same_v<S, V>) out[i] = v;
                else if constexpr (std::is_same_v<S, double> || std::is_same_v<V, double>) out[i] = convert<V>(convert<double>(v));
                else out[i] = convert<V>(convert<float>(v));
            }
        };
        switch (t.dtype) {
            case StDType::F64: each(double{}); break;
            case StDType::F32: each(float{}); break;
            case StDType::F16: each(f16{}); break;
            default: each(bf16{}); break;
        }
    }

private:
    void parse() {
        const std::string p = path_.filename().string();
        std::uint64_t header_len = 0;
        std::memcpy(&header_len, map_, 8);  // little-endian hosts only (x86-64, aarch64)
        DSV2_CHECK(header_len <= size_ - 8, CheckpointError,
                   "[safetensors] {}: header length {} runs past the end of the file ({} bytes)", p, header_len, size_);
        data_ = 8 + static_cast<std::size_t>(header_len);
        const std::size_t data_size = size_ - data_;
        nlohmann::json header;
        try {
            header = nlohmann::json::parse(static_cast<const char*>(map_) + 8, static_cast<const char*>(map_) + data_);
        } catch (const nlohmann::json::exception& e) {
            DSV2_FAIL(CheckpointError, "[safetensors] {}: malformed JSON header: {}", p, e.what());
        }
        DSV2_CHECK(header.is_object(), CheckpointError, "[safetensors] {}: header is not a JSON object", p);
        std::vector<const StTensor*> by_offset;
        for (auto& [name, info] : header.items()) {
            if (name == "__metadata__") {
                DSV2_CHECK(info.is_object(), CheckpointError, "[safetensors] {}: __metadata__ is not an object", p);
                for (auto& [k, v] : info.items()) {
                    DSV2_CHECK(v.is_string(), CheckpointError, "[safetensors] {}: __metadata__.{} is not a string", p, k);
                    metadata_[k] = v.get<std::string>();
                }
                continue;
            }
            DSV2_CHECK(info.is_object(), CheckpointError, "[safetensors] {} in {}: entry is not an object", name, p);
            StTensor t;
            t.name = name;
            const auto dt = info.find("dtype");
            DSV2_CHECK(dt != info.end() && dt->is_string(), CheckpointError, "[safetensors] {} in {}: missing dtype", name, p);
            t.dtype = parse_dtype(dt->get<std::string>(), name, p);
            const auto sh = info.find("shape");
            DSV2_CHECK(sh != info.end() && sh->is_array(), CheckpointError, "[safetensors] {} in {}: missing shape", name, p);
            std::int64_t numel = 1;
            for (const auto& d : *sh) {
                // An unsigned entry above INT64_MAX would turn negative in get<int64_t>.
                DSV2_CHECK(d.is_number_unsigned() ? d.get<std::uint64_t>() <= std::uint64_t{INT64_MAX}
                                                  : d.is_number_integer() && d.get<std::int64_t>() >= 0,
                           CheckpointError,
                           "[safetensors] {} in {}: shape entry {} is not a non-negative integer", name, p, d.dump());
                const auto dim = d.get<std::int64_t>();
                DSV2_CHECK(dim == 0 || numel <= (std::int64_t{1} << 48) / std::max<std::int64_t>(dim, 1), CheckpointError,
                           "[safetensors] {} in {}: shape {} is too large", name, p, sh->dump());
                numel *= dim;
                t.shape.push_back(dim);
            }
            const auto off = info.find("data_offsets");
            DSV2_CHECK(off != info.end() && off->is_array() && off->size() == 2 && (*off)[0].is_number_unsigned() &&
                           (*off)[1].is_number_unsigned(),
                       CheckpointError, "[safetensors] {} in {}: data_offsets must be two non-negative integers", name, p);
            const auto b = (*off)[0].get<std::uint64_t>(), e = (*off)[1].get<std::uint64_t>();
            DSV2_CHECK(b <= e && e <= data_size, CheckpointError,
                       "[safetensors] {} in {}: data_offsets [{}, {}] outside the data section of {} bytes", name, p, b, e,
                       data_size);
            const std::uint64_t expected = static_cast<std::uint64_t>(numel) * st_item_size(t.dtype);
            DSV2_CHECK(e - b == expected, CheckpointError,
                       "[safetensors] {} in {}: expected {} bytes for {} of shape {}, found {}", name, p, expected,
                       st_name(t.dtype), sh->dump(), e - b);
            t.begin = static_cast<std::size_t>(b);
            t.end = static_cast<std::size_t>(e);
            tensors_.emplace(name, std::move(t));
        }
        for (const auto& [name, t] : tensors_) by_offset.push_back(&t);
        std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
        // Compare each tensor with the furthest-reaching non-empty one before
        // it, not just its neighbour: an empty tensor in between must not
        // hide an overlap.
        const StTensor* reach = nullptr;
        for (const StTensor* b : by_offset) {
            if (b->begin == b->end) continue;
            if (reach != nullptr) {
                DSV2_CHECK(reach->end <= b->begin, CheckpointError,
                           "[safetensors] {}: tensors {} [{}, {}) and {} [{}, {}) overlap", p, reach->name, reach->begin,
                           reach->end, b->name, b->begin, b->end);
            }
            if (reach == nullptr || b->end > reach->end) reach = b;
        }
    }

    static StDType parse_dtype(const std::string& s, const std::string& name, const std::string& p) {
        constexpr StDType all[] = {StDType::F64, StDType::F32, StDType::F16, StDType::BF16, StDType::I64,
                                   StDType::I32, StDType::I16, StDType::I8,  StDType::U8,   StDType::BOOL};
        for (auto d : all)
            if (st_name(d) == s) return d;
        DSV2_FAIL(CheckpointError, "[safetensors] {} in {}: unknown dtype \"{}\"", name, p, s);
    }

    void close() noexcept {
        if (map_ != MAP_FAILED) ::munmap(map_, size_);
        if (fd_ >= 0) ::close(fd_);
        map_ = MAP_FAILED;
        fd_ = -1;
    }

    std::filesystem::path path_;
    std::map<std::string, StTensor> tensors_;
    std::map<std::string, std::string> metadata_;
    int fd_ = -1;
    void* map_ = MAP_FAILED;
    std::size_t size_ = 0, data_ = 0;
};

// Writes tensors (already encoded as raw bytes of `dtype`) to a safetensors file.
struct StWriteEntry {
    std::string name;
    StDType dtype = StDType::F32;
    std::vector<std::int64_t> shape;
    std::vector<char> bytes;
};

inline void write_safetensors(const std::filesystem::path& path, std::vector<StWriteEntry> entries,
                              const std::map<std::string, std::string>& metadata = {{"format", "pt"}}) {
    std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
    nlohmann::ordered_json header;
    if (!metadata.empty()) header["__metadata__"] = metadata;
    std::size_t offset = 0;
    for (const auto& e : entries) {
        std::int64_t n = 1;
        for (auto s : e.shape) n *= s;
        DSV2_CHECK(static_cast<std::size_t>(n) * st_item_size(e.dtype) == e.bytes.size(), ShapeError,
                   "[safetensors] writing {}: {} bytes for {} of {} elements", e.name, e.bytes.size(), st_name(e.dtype), n);
        header[e.name] = {{"dtype", st_name(e.dtype)}, {"shape", e.shape}, {"data_offsets", {offset, offset + e.bytes.size()}}};
        offset += e.bytes.size();
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');
    std::ofstream out(path, std::ios::binary);
    DSV2_CHECK(out.good(), CheckpointError, "[safetensors] {}: cannot create file", path.string());
    const std::uint64_t len = text.size();
    out.write(reinterpret_cast<const char*>(&len), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& e : entries) out.write(e.bytes.data(), static_cast<std::streamsize>(e.bytes.size()));
    DSV2_CHECK(out.good(), CheckpointError, "[safetensors] {}: write failed", path.string());
}

}  // namespace dsv2
