// Scratch memory for forward passes. Components never allocate in `forward`:
// they take views from a Workspace, which is reset at the start of each step.
// The first steps grow it; once it has seen the largest step it stops
// allocating (chunks are merged into one at the next reset).
#pragma once

#include "dsv2/core/tensor.hpp"

#include <algorithm>
#include <vector>

namespace dsv2 {

template <class B>
class Workspace {
public:
    Workspace() = default;
    explicit Workspace(std::size_t bytes) { chunks_.push_back(Chunk{bytes}); }
    Workspace(const Workspace&) = delete;
    Workspace& operator=(const Workspace&) = delete;
    Workspace(Workspace&&) noexcept = default;
    Workspace& operator=(Workspace&&) noexcept = default;

    // Frees everything taken since the last reset. Views taken before are invalid.
    void reset() {
        if (chunks_.size() > 1) {
            const std::size_t total = capacity();
            chunks_.clear();
            chunks_.push_back(Chunk{total});
        }
        for (auto& c : chunks_) c.used = 0;
        current_ = 0;
    }

    template <class T, std::size_t R>
    View<T, B, static_cast<int>(R)> take(const std::array<std::int64_t, R>& shape) {
        std::int64_t n = 1;
        for (auto s : shape) n *= s;
        return {static_cast<T*>(take_bytes(static_cast<std::size_t>(n) * sizeof(T))), shape};
    }

    // Takes made inside a Scope are given back when it ends, so a loop over
    // experts or sequences reuses the same scratch instead of stacking it.
    class Scope {
    public:
        explicit Scope(Workspace& ws)
            : ws_(ws), chunk_(ws.current_), used_(ws.chunks_.empty() ? 0 : ws.chunks_[ws.current_].used) {}
        Scope(const Scope&) = delete;
        Scope& operator=(const Scope&) = delete;
        ~Scope() {
            for (std::size_t i = chunk_ + 1; i < ws_.chunks_.size(); ++i) ws_.chunks_[i].used = 0;
            if (chunk_ < ws_.chunks_.size()) ws_.chunks_[chunk_].used = used_;
            ws_.current_ = chunk_;
        }

    private:
        Workspace& ws_;
        std::size_t chunk_, used_;
    };

    // Host-side index scratch (expert offsets and the like), reused across steps.
    std::vector<std::int64_t>& host_index() { return host_index_; }

    std::size_t capacity() const {
        std::size_t total = 0;
        for (auto& c : chunks_) total += c.size;
        return total;
    }

private:
    static constexpr std::size_t kAlign = 64;
    struct Chunk {
        explicit Chunk(std::size_t bytes) : size(bytes), mem(bytes ? Memory<B>::allocate(bytes) : nullptr) {}
        Chunk(Chunk&& o) noexcept : size(o.size), used(o.used), mem(o.mem) { o.mem = nullptr; }
        Chunk& operator=(Chunk&&) = delete;
        Chunk(const Chunk&) = delete;
        ~Chunk() {
            if (mem) Memory<B>::release(mem);
        }
        std::size_t size = 0, used = 0;
        void* mem = nullptr;
    };

    void* take_bytes(std::size_t bytes) {
        bytes = std::max<std::size_t>(kAlign, (bytes + kAlign - 1) / kAlign * kAlign);
        while (current_ < chunks_.size() && chunks_[current_].size - chunks_[current_].used < bytes) ++current_;
        if (current_ == chunks_.size()) chunks_.push_back(Chunk{std::max<std::size_t>(bytes, capacity())});
        auto& c = chunks_[current_];
        void* p = static_cast<char*>(c.mem) + c.used;
        c.used += bytes;
        return p;
    }

    std::vector<Chunk> chunks_;
    std::size_t current_ = 0;
    std::vector<std::int64_t> host_index_;
};

}  // namespace dsv2
