// A scratch directory for tests that write files (malformed configs,
// hand-built safetensors, sharded checkpoints). Unique per object, so tests
// running in parallel under ctest never share one; removed on destruction.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <string_view>

namespace dsv2::test {

class TempDir {
public:
    explicit TempDir(std::string_view tag = "dsv2") {
        std::string pattern = (std::filesystem::temp_directory_path() / (std::string(tag) + "-XXXXXX")).string();
        if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed for " + pattern);
        path_ = pattern;
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }

    const std::filesystem::path& path() const { return path_; }
    std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

    // Writes `bytes` verbatim to `name` inside the directory; returns its path.
    std::filesystem::path write(const std::string& name, std::string_view bytes) const {
        const auto p = path_ / name;
        std::ofstream out(p, std::ios::binary);
        out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
        if (!out.good()) throw std::runtime_error("cannot write " + p.string());
        return p;
    }

private:
    std::filesystem::path path_;
};

}  // namespace dsv2::test
