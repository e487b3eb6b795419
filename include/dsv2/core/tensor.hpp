// Owning tensors and non-owning strided views, tagged with the backend whose
// memory they live in. A `View<T, cpu, 2>` and a `View<T, cuda, 2>` are
// different types, so handing host memory to a device primitive does not
// compile. Element access through `operator()` exists only for host memory.
#pragma once

#include "dsv2/core/dtype.hpp"
#include "dsv2/core/error.hpp"

#include <array>
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <type_traits>

namespace dsv2 {

// Where a backend's memory lives. Each backend specialises `Memory<B>` with
// `host_accessible`, `allocate(bytes)`, `release(ptr)`, `zero(ptr, bytes)`.
template <class B>
struct Memory;

template <class B>
concept HostMemory = Memory<B>::host_accessible;

template <std::size_t R>
inline std::string shape_str(const std::array<std::int64_t, R>& shape) {
    return fmt::format("({})", fmt::join(shape, ", "));
}

template <class T, class B, int R>
struct View {
    static_assert(R >= 1, "a view has at least one dimension");
    using element_type = T;
    using value_type = std::remove_const_t<T>;
    using backend = B;
    static constexpr int rank = R;
    using Shape = std::array<std::int64_t, R>;

    T* data = nullptr;
    Shape shape{};
    Shape stride{};  // in elements

    View() = default;
    // A contiguous row-major view.
    View(T* d, const Shape& s) : data(d), shape(s) {
        std::int64_t st = 1;
        for (int i = R - 1; i >= 0; --i) {
            stride[i] = st;
            st *= shape[i];
        }
    }
    View(T* d, const Shape& s, const Shape& st) : data(d), shape(s), stride(st) {}

    // View<T> converts to View<const T>, never the other way.
    operator View<const value_type, B, R>() const
        requires(!std::is_const_v<T>)
    {
        return {data, shape, stride};
    }

    std::int64_t size(int dim) const { return shape[dim]; }
    std::int64_t numel() const {
        std::int64_t n = 1;
        for (auto s : shape) n *= s;
        return n;
    }
    bool empty() const { return numel() == 0; }
    bool contiguous() const {
        std::int64_t st = 1;
        for (int i = R - 1; i >= 0; --i) {
            if (shape[i] != 1 && stride[i] != st) return false;
            st *= shape[i];
        }
        return true;
    }
    // Rows are contiguous (innermost stride 1): what GEMM-like primitives need.
    bool rows_contiguous() const { return shape[R - 1] <= 1 || stride[R - 1] == 1; }

    template <class... I>
    T& operator()(I... idx) const
        requires(HostMemory<B> && sizeof...(I) == R)
    {
        const std::array<std::int64_t, R> ix{static_cast<std::int64_t>(idx)...};
        std::int64_t off = 0;
        for (int d = 0; d < R; ++d) {
            assert(ix[d] >= 0 && ix[d] < shape[d]);
            off += ix[d] * stride[d];
        }
        return data[off];
    }

    // Fix the first index: a view of one rank less.
    View<T, B, R - 1> operator[](std::int64_t i) const
        requires(R > 1)
    {
        assert(i >= 0 && i < shape[0]);
        typename View<T, B, R - 1>::Shape s{}, st{};
        for (int d = 1; d < R; ++d) {
            s[d - 1] = shape[d];
            st[d - 1] = stride[d];
        }
        return {data + i * stride[0], s, st};
    }

    // Narrow dimension `dim` to [begin, end).
    View slice(int dim, std::int64_t begin, std::int64_t end) const {
        assert(dim >= 0 && dim < R && 0 <= begin && begin <= end && end <= shape[dim]);
        View v = *this;
        v.data = data + begin * stride[dim];
        v.shape[dim] = end - begin;
        return v;
    }
    View rows(std::int64_t begin, std::int64_t end) const { return slice(0, begin, end); }
    View cols(std::int64_t begin, std::int64_t end) const { return slice(R - 1, begin, end); }

    // Reinterpret a contiguous view with another shape of the same size.
    template <std::size_t R2>
    View<T, B, static_cast<int>(R2)> reshape(const std::array<std::int64_t, R2>& s) const {
        std::int64_t n = 1;
        for (auto x : s) n *= x;
        DSV2_CHECK(contiguous() && n == numel(), ShapeError,
                   "reshape {} -> {}: needs a contiguous view of the same size", shape_str(shape),
                   shape_str(s));
        return {data, s};
    }
};

// The read-only view of any view (primitives take inputs as View<const T>).
template <class T, class B, int R>
View<const std::remove_const_t<T>, B, R> cview(const View<T, B, R>& v) {
    return {v.data, v.shape, v.stride};
}

template <class V>
inline constexpr bool is_view_v = false;
template <class T, class B, int R>
inline constexpr bool is_view_v<View<T, B, R>> = true;

// Checks a view's shape at a public boundary; `what` names the tensor.
template <class T, class B, int R>
void expect_shape(const View<T, B, R>& v, const std::array<std::int64_t, R>& expected,
                  std::string_view what) {
    DSV2_CHECK(v.shape == expected, ShapeError, "{}: expected shape {}, found {}", what,
               shape_str(expected), shape_str(v.shape));
}

// Owning, contiguous, row-major tensor in backend B's memory. Move-only.
template <class T, class B, int R>
class Tensor {
public:
    using value_type = T;
    using Shape = std::array<std::int64_t, R>;

    Tensor() = default;
    explicit Tensor(const Shape& shape) : shape_(shape) {
        std::int64_t n = 1;
        for (auto s : shape) {
            DSV2_CHECK(s >= 0, ShapeError, "tensor shape {} has a negative extent", shape_str(shape));
            DSV2_CHECK(s == 0 || n <= INT64_MAX / s / static_cast<std::int64_t>(sizeof(T)),
                       ShapeError, "tensor shape {} overflows the addressable size", shape_str(shape));
            n *= s;
        }
        if (n > 0) {
            data_.reset(static_cast<T*>(Memory<B>::allocate(static_cast<std::size_t>(n) * sizeof(T))));
        }
    }
    static Tensor zeros(const Shape& shape) {
        Tensor t(shape);
        if (t.numel() > 0) Memory<B>::zero(t.data(), t.bytes());
        return t;
    }

    T* data() { return data_.get(); }
    const T* data() const { return data_.get(); }
    const Shape& shape() const { return shape_; }
    std::int64_t size(int dim) const { return shape_[dim]; }
    std::int64_t numel() const {
        std::int64_t n = 1;
        for (auto s : shape_) n *= s;
        return n;
    }
    std::size_t bytes() const { return static_cast<std::size_t>(numel()) * sizeof(T); }

    View<T, B, R> view() { return {data(), shape_}; }
    View<const T, B, R> view() const { return {data(), shape_}; }
    View<const T, B, R> cview() const { return {data(), shape_}; }
    operator View<T, B, R>() { return view(); }
    operator View<const T, B, R>() const { return view(); }

private:
    struct Release {
        void operator()(T* p) const { Memory<B>::release(p); }
    };
    std::unique_ptr<T, Release> data_;
    Shape shape_{};
};

}  // namespace dsv2
