// The CPU speed kernels against simple loops: the matrix-vector kernels
// (gemv.hpp) in every weight type and awkward shapes, linear/matmul through
// the GEMV path against the same products through the GEMM path, causal
// attention (query blocks, head groups, a poisoned future token) against a
// double loop, split-context attention (flash_decode.hpp) against one-thread attention,
// grouped products against one at a time, and the paged MLA decode kernel
// (its Eigen path and its bf16 AVX-512 path) against a double softmax over
// the rows in block-table order; the SwiGLU activation against libm in
// double.
#include <catch2/catch.hpp>
#include <dsv2/dsv2.hpp>

#include "mla_reference.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

using dsv2::cpu;

namespace {

template <class T>
std::vector<T> random_values(std::size_t n, std::uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> d(0.0f, 1.0f);
    std::vector<T> v(n);
    for (auto& e : v) e = dsv2::convert<T>(d(rng));
    return v;
}

// |a - e| <= tol * (1 + |e|), elementwise; reports the worst.
void require_close(const std::vector<float>& a, const std::vector<double>& e, double tol) {
    REQUIRE(a.size() == e.size());
    double worst = 0;
    std::size_t at = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        REQUIRE(std::isfinite(a[i]));
        const double err = std::abs(a[i] - e[i]) / (1 + std::abs(e[i]));
        if (err > worst) worst = err, at = i;
    }
    INFO("worst relative error " << worst << " at " << at << " of " << a.size());
    REQUIRE(worst <= tol);
}


}  // namespace

TEMPLATE_TEST_CASE("GEMV kernels match a double loop on awkward shapes", "[kernels]", float, dsv2::bf16, dsv2::f16) {
    using T = TestType;
    for (std::int64_t k : {1, 15, 16, 17, 33, 300}) {
        for (std::int64_t rows : {1, 3, 4, 9, 70}) {
            for (std::int64_t n : {1, 2, 4}) {
                INFO("k " << k << ", rows " << rows << ", n " << n);
                const auto x = random_values<float>(static_cast<std::size_t>(n * k), 1);
                const auto w = random_values<T>(static_cast<std::size_t>(rows * k), 2);
                // (M, K) layout into an output with a NaN guard column.
                const std::int64_t ldy = rows + 1;
                std::vector<float> y(static_cast<std::size_t>(n * ldy), std::nanf(""));
                dsv2::cpu_detail::gemv_rows(x.data(), k, n, w.data(), k, k, 0, rows, y.data(), ldy);
                std::vector<float> got;
                std::vector<double> want;
                for (std::int64_t i = 0; i < n; ++i) {
                    REQUIRE(std::isnan(y[static_cast<std::size_t>(i * ldy + rows)]));
                    for (std::int64_t r = 0; r < rows; ++r) {
                        double acc = 0;
                        for (std::int64_t j = 0; j < k; ++j)
                            acc += double(x[i * k + j]) * dsv2::convert<double>(w[r * k + j]);
                        got.push_back(y[static_cast<std::size_t>(i * ldy + r)]);
                        want.push_back(acc);
                    }
                }
                require_close(got, want, 1e-4 * std::sqrt(double(k)));
                // (K, M) layout: the same numbers read as w^T of shape (k=rows, m=k).
                std::vector<float> yc(static_cast<std::size_t>(n * k), std::nanf(""));
                const auto xc = random_values<float>(static_cast<std::size_t>(n * rows), 3);
                dsv2::cpu_detail::gemv_cols(xc.data(), rows, n, w.data(), k, rows, 0, k, yc.data(), k);
                want.clear();
                for (std::int64_t i = 0; i < n; ++i)
                    for (std::int64_t c = 0; c < k; ++c) {
                        double acc = 0;
                        for (std::int64_t j = 0; j < rows; ++j)
                            acc += double(xc[i * rows + j]) * dsv2::convert<double>(w[j * k + c]);
                        want.push_back(acc);
                    }
                require_close(yc, want, 1e-4 * std::sqrt(double(rows)));
            }
        }
    }
}

TEMPLATE_TEST_CASE("a GEMV kernel reads and writes only its rows of a strided matrix", "[kernels]", float, dsv2::bf16,
                   dsv2::f16) {
    using T = TestType;
    // Rows [5, 38) of 41, each followed by 7 elements of padding that hold
    // a large value: a kernel that strays past k, or outside its rows, shows.
    // (Its prefetch cursor stays inside the same rows; ASan would see an
    // address formed past the matrix.)
    const std::int64_t m = 41, k = 70, ldw = k + 7, r0 = 5, r1 = 38;
    const auto x = random_values<float>(static_cast<std::size_t>(k), 6);
    const auto dense = random_values<T>(static_cast<std::size_t>(m * k), 7);
    std::vector<T> w(static_cast<std::size_t>(m * ldw), dsv2::convert<T>(1000.0f));
    for (std::int64_t r = 0; r < m; ++r) std::copy_n(dense.begin() + r * k, k, w.begin() + r * ldw);
    std::vector<float> y(static_cast<std::size_t>(m), std::nanf(""));
    dsv2::cpu_detail::gemv_rows(x.data(), k, 1, w.data(), ldw, k, r0, r1, y.data(), 1);
    std::vector<float> got;
    std::vector<double> want;
    for (std::int64_t r = 0; r < m; ++r) {
        INFO("row " << r);
        if (r < r0 || r >= r1) {
            REQUIRE(std::isnan(y[static_cast<std::size_t>(r)]));
            continue;
        }
        double acc = 0;
        for (std::int64_t j = 0; j < k; ++j) acc += double(x[j]) * dsv2::convert<double>(dense[r * k + j]);
        got.push_back(y[static_cast<std::size_t>(r)]);
        want.push_back(acc);
    }
    require_close(got, want, 1e-4 * std::sqrt(double(k)));
}

TEMPLATE_TEST_CASE("linear and matmul give the same rows on the GEMV and GEMM paths", "[kernels]", float, dsv2::bf16,
                   dsv2::f16) {
    using T = TestType;
    dsv2::Context<cpu> ctx(2);
    const std::int64_t n = 7, k = 301, m = 515;  // rows 0..3 also go through the GEMV path alone
    const auto xv = random_values<float>(static_cast<std::size_t>(n * k), 4);
    const auto wv = random_values<T>(static_cast<std::size_t>(m * k), 5);
    dsv2::Tensor<float, cpu, 2> x({n, k}), y_all({n, m}), y_few({4, m});
    dsv2::Tensor<T, cpu, 2> w({m, k});
    std::copy(xv.begin(), xv.end(), x.data());
    std::copy(wv.begin(), wv.end(), w.data());
    dsv2::linear(ctx, x.cview(), w.cview(), y_all.view());                  // GEMM path (n > 4)
    dsv2::linear(ctx, x.cview().rows(0, 4), w.cview(), y_few.view());       // GEMV path
    std::vector<float> got(y_few.data(), y_few.data() + 4 * m);
    std::vector<double> want(y_all.data(), y_all.data() + 4 * m);
    // Both paths are exact f32 products up to summation order (gemm_panels.hpp
    // widens the weights; the activations are not rounded).
    require_close(got, want, 1e-4);

    // matmul: the same weights read as (K=m, M=k)... use a (k, m) weight instead.
    dsv2::Tensor<T, cpu, 2> wt({k, m});
    std::copy(wv.begin(), wv.end(), wt.data());
    dsv2::Tensor<float, cpu, 2> z_all({n, m}), z_few({4, m});
    dsv2::matmul(ctx, x.cview(), wt.cview(), z_all.view());
    dsv2::matmul(ctx, x.cview().rows(0, 4), wt.cview(), z_few.view());
    std::vector<float> got2(z_few.data(), z_few.data() + 4 * m);
    std::vector<double> want2(z_all.data(), z_all.data() + 4 * m);
    require_close(got2, want2, 1e-4);
}

TEMPLATE_TEST_CASE("split-context decode attention equals one-thread attention", "[kernels]", float, double) {
    using A = TestType;
    for (std::int64_t s_len : {512, 513, 2049}) {
        for (std::int64_t n : {1, 2}) {
            INFO("context " << s_len << ", queries " << n);
            const std::int64_t heads = 4, dk = 40, dv = 24;
            const auto qv = random_values<A>(static_cast<std::size_t>(n * heads * dk), 6);
            const auto kv = random_values<A>(static_cast<std::size_t>(s_len * dk), 7);
            const auto vv = random_values<A>(static_cast<std::size_t>(s_len * dv), 8);
            const dsv2::View<const A, cpu, 3> q(qv.data(), {n, heads, dk});
            const dsv2::View<const A, cpu, 3> k(kv.data(), {s_len, 1, dk});
            const dsv2::View<const A, cpu, 3> v(vv.data(), {s_len, 1, dv});
            dsv2::Tensor<A, cpu, 3> one({n, heads, dv}), split({n, heads, dv});
            dsv2::Context<cpu> ctx1(1), ctx4(4);
            dsv2::attention(ctx1, q, k, v, s_len - n, 0.2, one.view());
            dsv2::attention(ctx4, q, k, v, s_len - n, 0.2, split.view());
            std::vector<float> got;
            std::vector<double> want;
            for (std::int64_t i = 0; i < one.numel(); ++i) {
                got.push_back(static_cast<float>(split.data()[i]));
                want.push_back(static_cast<double>(one.data()[i]));
            }
            require_close(got, want, 1e-5);
        }
    }
}

// Causal attention in double: query i of a step starting at `first` sees
// keys 0..first+i; heads share key heads in groups.
std::vector<double> attention_reference(const std::vector<float>& q, const std::vector<float>& k,
                                        const std::vector<float>& v, std::int64_t n, std::int64_t heads,
                                        std::int64_t kv_heads, std::int64_t dk, std::int64_t dv, std::int64_t first,
                                        double scale) {
    std::vector<double> out(static_cast<std::size_t>(n * heads * dv));
    for (std::int64_t i = 0; i < n; ++i) {
        for (std::int64_t h = 0; h < heads; ++h) {
            const std::int64_t g = h / (heads / kv_heads), visible = first + i + 1;
            std::vector<double> p(static_cast<std::size_t>(visible));
            for (std::int64_t j = 0; j < visible; ++j) {
                double dot = 0;
                for (std::int64_t c = 0; c < dk; ++c)
                    dot += double(q[static_cast<std::size_t>((i * heads + h) * dk + c)]) *
                           k[static_cast<std::size_t>((j * kv_heads + g) * dk + c)];
                p[static_cast<std::size_t>(j)] = scale * dot;
            }
            const double mx = *std::max_element(p.begin(), p.end());
            double sum = 0;
            for (auto& e : p) sum += (e = std::exp(e - mx));
            for (std::int64_t c = 0; c < dv; ++c) {
                double acc = 0;
                for (std::int64_t j = 0; j < visible; ++j)
                    acc += p[static_cast<std::size_t>(j)] * v[static_cast<std::size_t>((j * kv_heads + g) * dv + c)];
                out[static_cast<std::size_t>((i * heads + h) * dv + c)] = acc / sum;
            }
        }
    }
    return out;
}

TEST_CASE("causal attention equals a double loop across query blocks and head groups", "[kernels]") {
    const std::int64_t heads = 4, dk = 24, dv = 16;
    for (std::int64_t kv_heads : {4, 2, 1}) {
        for (std::int64_t n : {1, 5, 31, 32, 33, 70}) {
            for (std::int64_t first : {0, 3}) {
                INFO("key heads " << kv_heads << ", queries " << n << ", first position " << first);
                const std::int64_t s_len = first + n;
                const auto qv = random_values<float>(static_cast<std::size_t>(n * heads * dk), 31);
                auto kv = random_values<float>(static_cast<std::size_t>(s_len * kv_heads * dk), 32);
                auto vv = random_values<float>(static_cast<std::size_t>(s_len * kv_heads * dv), 33);
                const auto want = attention_reference(qv, kv, vv, n, heads, kv_heads, dk, dv, first, 0.3);
                // A non-finite key or value of the last token must not reach any
                // earlier query: causality, not a zero weight times infinity.
                kv.back() = std::numeric_limits<float>::infinity();
                vv.back() = std::numeric_limits<float>::quiet_NaN();
                dsv2::Tensor<float, cpu, 3> out({n, heads, dv});
                dsv2::Context<cpu> ctx(2);
                dsv2::attention(ctx, dsv2::View<const float, cpu, 3>(qv.data(), {n, heads, dk}),
                                dsv2::View<const float, cpu, 3>(kv.data(), {s_len, kv_heads, dk}),
                                dsv2::View<const float, cpu, 3>(vv.data(), {s_len, kv_heads, dv}), first, 0.3,
                                out.view());
                const std::int64_t checked = (n - 1) * heads * dv;  // every query but the last
                require_close(std::vector<float>(out.data(), out.data() + checked),
                              std::vector<double>(want.begin(), want.begin() + checked), 1e-5);
            }
        }
    }
}

TEMPLATE_TEST_CASE("grouped products equal one product at a time, split over threads anywhere", "[kernels]", float,
                   dsv2::bf16) {
    using T = TestType;
    using W = dsv2::View<const T, cpu, 2>;
    // Products of very different sizes, so the thread boundaries land inside
    // products, between them, and on a product of fewer rows than the align.
    const std::vector<std::array<std::int64_t, 3>> shapes{{1, 301, 515}, {3, 64, 2}, {2, 1000, 1029}, {1, 17, 3}};
    for (int threads : {1, 2, 3}) {
        INFO(threads << " threads");
        dsv2::Context<cpu> ctx(threads);
        std::vector<dsv2::Tensor<float, cpu, 2>> xs, ys, zs, ys_one, zs_one;
        std::vector<dsv2::Tensor<T, cpu, 2>> ws, wts;
        std::vector<dsv2::Product<float, W, cpu>> lin, mm;
        std::uint32_t seed = 10;
        for (const auto& [n, k, m] : shapes) {
            auto& x = xs.emplace_back(std::array{n, k});
            auto& w = ws.emplace_back(std::array{m, k});
            auto& wt = wts.emplace_back(std::array{k, m});
            const auto xv = random_values<float>(static_cast<std::size_t>(n * k), seed++);
            const auto wv = random_values<T>(static_cast<std::size_t>(m * k), seed++);
            std::copy(xv.begin(), xv.end(), x.data());
            std::copy(wv.begin(), wv.end(), w.data());
            std::copy(wv.begin(), wv.end(), wt.data());
            ys.emplace_back(std::array{n, m});
            zs.emplace_back(std::array{n, m});
            ys_one.emplace_back(std::array{n, m});
            zs_one.emplace_back(std::array{n, m});
        }
        for (std::size_t j = 0; j < shapes.size(); ++j) {
            lin.push_back({xs[j].cview(), ws[j].cview(), ys[j].view()});
            mm.push_back({xs[j].cview(), wts[j].cview(), zs[j].view()});
            dsv2::Context<cpu> one(1);
            dsv2::linear(one, xs[j].cview(), ws[j].cview(), ys_one[j].view());
            dsv2::matmul(one, xs[j].cview(), wts[j].cview(), zs_one[j].view());
        }
        dsv2::linear_group(ctx, lin);
        dsv2::matmul_group(ctx, mm);
        for (std::size_t j = 0; j < shapes.size(); ++j) {
            INFO("product " << j);
            // The same kernels over the same rows: equal to the bit.
            REQUIRE(std::equal(ys[j].data(), ys[j].data() + ys[j].numel(), ys_one[j].data()));
            REQUIRE(std::equal(zs[j].data(), zs[j].data() + zs[j].numel(), zs_one[j].data()));
        }
    }
}

TEMPLATE_TEST_CASE("paged MLA decode equals attention over the gathered rows", "[kernels]", float, dsv2::bf16) {
    using T = TestType;
    const std::int64_t heads = 3, rank = 24, rope = 8, w = rank + rope;
    for (std::int64_t page : {16, 64}) {
        for (std::int64_t len : {1, 5, 16, 17, 64, 65, 300, 1500}) {
            for (int threads : {1, 2}) {
                INFO("page " << page << ", context " << len << ", " << threads << " threads");
                const std::int64_t blocks = (len + page - 1) / page, n_pages = blocks + 3;
                // Pages in a scrambled order, so the block table matters.
                std::vector<std::int32_t> table(static_cast<std::size_t>(n_pages));
                std::iota(table.begin(), table.end(), 0);
                std::shuffle(table.begin(), table.end(), std::mt19937(static_cast<std::uint32_t>(len)));
                table.resize(static_cast<std::size_t>(blocks));
                const auto pv = random_values<T>(static_cast<std::size_t>(n_pages * page * w), 20);
                const auto qv = random_values<float>(static_cast<std::size_t>(heads * w), 21);
                const dsv2::View<const T, cpu, 3> pages(pv.data(), {n_pages, page, w});
                const dsv2::View<const float, cpu, 3> q(qv.data(), {1, heads, w});
                const dsv2::View<const std::int32_t, cpu, 2> tables(table.data(), {1, blocks});
                dsv2::Context<cpu> ctx(threads);
                dsv2::Tensor<float, cpu, 3> got({1, heads, rank});
                dsv2::mla_decode(ctx, q, pages, tables, {len}, 0.3, got.view());

                const auto want = dsv2::test::mla_reference(pv, qv.data(), w, table, page, heads, rank, w, len, 0.3);
                require_close(std::vector<float>(got.data(), got.data() + got.numel()), want, 2e-5);
            }
        }
    }
}

// The bf16 cache's AVX-512 paths — exact f32 products (mla_decode_avx512.hpp)
// and bf16 dot products (mla_decode_bf16_dot.hpp, on AVX512_BF16 CPUs for an
// even width and a rank that is a multiple of 32) — and the Eigen path on
// other CPUs: head counts around the 4-head score and 8-head value tiles and
// the dot kernel's 16-head blocks (20 heads: two), widths around the 32-lane
// blocks (V2-Lite's 512 + 64 among them), lengths around the 128-row tiles,
// the 8-row score blocks and the 512 keys a thread needs before the context
// is split, and two sequences of different lengths in one call.
TEST_CASE("paged MLA decode of a bf16 cache equals attention over the gathered rows", "[kernels]") {
    using T = dsv2::bf16;
    using dsv2::Bf16CacheProducts;
    const Bf16CacheProducts products = GENERATE(Bf16CacheProducts::exact, Bf16CacheProducts::bf16_dot);
    struct Shape { std::int64_t heads, rank, rope; };
    for (const Shape sh : {Shape{1, 24, 8}, Shape{3, 40, 9}, Shape{16, 512, 64}, Shape{5, 64, 32}, Shape{4, 20, 8},
                           Shape{20, 96, 8}, Shape{2, 32, 2}}) {
        const std::int64_t heads = sh.heads, rank = sh.rank, w = sh.rank + sh.rope;
        const double scale = 2.0 / std::sqrt(double(w));
        for (std::int64_t page : {3, 16, 64}) {
            for (const auto& lens : {std::vector<std::int64_t>{1, 3}, std::vector<std::int64_t>{127, 129},
                                     std::vector<std::int64_t>{1023, 128}, std::vector<std::int64_t>{2100, 515}}) {
                for (int threads : {1, 2}) {
                    dsv2::Context<cpu> ctx(threads);
                    ctx.bf16_cache_products = products;
#if DSV2_X86_KERNELS
                    const bool dot = dsv2::cpu_detail::use_bf16_dot(ctx, w, rank);
#else
                    const bool dot = false;
#endif
                    INFO(heads << " heads, width " << rank << " + " << sh.rope << ", page " << page << ", contexts "
                               << lens[0] << " and " << lens[1] << ", " << threads << " threads, bf16 dot products "
                               << dot);
                    const std::int64_t blocks = (std::max(lens[0], lens[1]) + page - 1) / page,
                                       n_pages = 2 * blocks + 1;
                    std::vector<std::int32_t> perm(static_cast<std::size_t>(n_pages));
                    std::iota(perm.begin(), perm.end(), 0);
                    std::shuffle(perm.begin(), perm.end(), std::mt19937(static_cast<std::uint32_t>(lens[0] + w)));
                    const std::vector<std::int32_t> table(perm.begin(), perm.begin() + 2 * blocks);  // (2, blocks)
                    const std::vector<std::int32_t> t0(table.begin(), table.begin() + blocks),
                        t1(table.begin() + blocks, table.end());
                    const auto pv = random_values<T>(static_cast<std::size_t>(n_pages * page * w), 30);
                    const auto qv = random_values<float>(static_cast<std::size_t>(2 * heads * w), 31);
                    dsv2::Tensor<float, cpu, 3> got({2, heads, rank});
                    dsv2::mla_decode(ctx, dsv2::View<const float, cpu, 3>(qv.data(), {2, heads, w}),
                                     dsv2::View<const T, cpu, 3>(pv.data(), {n_pages, page, w}),
                                     dsv2::View<const std::int32_t, cpu, 2>(table.data(), {2, blocks}), lens, scale,
                                     got.view());
                    // The dot kernel rounds scale · q to bf16: the reference
                    // takes the same query, so what is left is the rounding
                    // of the probabilities to bf16 (relative 2^-9 each).
                    std::vector<float> q_ref = qv;
                    double scale_ref = scale;
                    if (dot) {
                        for (auto& e : q_ref) e = float(T(e * float(scale)));
                        scale_ref = 1.0;
                    }
                    using dsv2::test::mla_reference;
                    auto want = mla_reference(pv, q_ref.data(), w, t0, page, heads, rank, w, lens[0], scale_ref);
                    const auto want1 = mla_reference(pv, q_ref.data() + heads * w, w, t1, page, heads, rank, w,
                                                     lens[1], scale_ref);
                    want.insert(want.end(), want1.begin(), want1.end());
                    require_close(std::vector<float>(got.data(), got.data() + got.numel()), want, dot ? 4e-3 : 2e-5);
                }
            }
        }
    }
}

#if DSV2_X86_KERNELS
// The row prefetcher (prefetch.hpp; MLA decode and the prefill GEMM) names
// every cache line of every row, rows at any alignment, and no byte outside them.
TEST_CASE("the row prefetcher covers each row's lines and stays inside the rows", "[kernels]") {
    std::vector<dsv2::bf16> buffer(4096);
    for (std::int64_t w : {1, 9, 32, 33, 576}) {
        for (std::int64_t offset : {0, 1, 7, 31}) {  // in bf16 elements: rows on and off line boundaries
            INFO("width " << w << ", offset " << offset);
            const std::int64_t n = 3;
            std::vector<const dsv2::bf16*> rows;
            for (std::int64_t i = 0; i < n; ++i) rows.push_back(buffer.data() + offset + i * (w + 5));
            dsv2::cpu_detail::RowPrefetcher<dsv2::bf16> pf;
            pf.start(rows.data(), n, w);
            std::vector<std::vector<std::uintptr_t>> lines(static_cast<std::size_t>(n));
            int steps = 0;
            for (; pf.address() != nullptr && steps < 10000; ++steps) {
                const auto a = reinterpret_cast<std::uintptr_t>(pf.address());
                bool inside = false;
                for (std::int64_t i = 0; i < n; ++i) {
                    const auto r0 = reinterpret_cast<std::uintptr_t>(rows[static_cast<std::size_t>(i)]);
                    if (a >= r0 && a < r0 + static_cast<std::uintptr_t>(w * 2)) {
                        inside = true;
                        lines[static_cast<std::size_t>(i)].push_back(a / 64);
                    }
                }
                REQUIRE(inside);
                pf.step();
            }
            REQUIRE(pf.address() == nullptr);
            for (std::int64_t i = 0; i < n; ++i) {
                const auto r0 = reinterpret_cast<std::uintptr_t>(rows[static_cast<std::size_t>(i)]);
                auto got = lines[static_cast<std::size_t>(i)];
                std::sort(got.begin(), got.end());
                got.erase(std::unique(got.begin(), got.end()), got.end());
                std::vector<std::uintptr_t> want;
                for (std::uintptr_t l = r0 / 64; l <= (r0 + static_cast<std::uintptr_t>(w * 2) - 1) / 64; ++l)
                    want.push_back(l);
                REQUIRE(got == want);
            }
        }
    }
}
#endif

TEST_CASE("paged MLA decode rejects a block table entry outside the cache", "[kernels]") {
    std::vector<float> pv(2 * 4 * 6, 0.5f), qv(6, 1.0f);
    std::vector<std::int32_t> table{0, 2};  // page 2 of 2
    dsv2::Context<cpu> ctx(1);
    dsv2::Tensor<float, cpu, 3> out({1, 1, 4});
    REQUIRE_THROWS_WITH(dsv2::mla_decode(ctx, dsv2::View<const float, cpu, 3>(qv.data(), {1, 1, 6}),
                                         dsv2::View<const float, cpu, 3>(pv.data(), {2, 4, 6}),
                                         dsv2::View<const std::int32_t, cpu, 2>(table.data(), {1, 2}), {6}, 1.0,
                                         out.view()),
                        Catch::Contains("block table entry 1 is page 2"));
}

TEMPLATE_TEST_CASE("silu_mul matches silu(g) * u in double, in place too", "[kernels]", float, double) {
    using A = TestType;
    dsv2::Context<cpu> ctx(1);
    const std::int64_t n = 2, f = 1001;  // odd: the vector loop's tail
    dsv2::Tensor<A, cpu, 2> g({n, f}), u({n, f}), out({n, f});
    std::mt19937 rng(9);
    std::uniform_real_distribution<double> wide(-90.0, 90.0), unit(-1.0, 1.0);
    for (std::int64_t i = 0; i < n * f; ++i) {
        g.data()[i] = static_cast<A>(i % 3 == 0 ? wide(rng) : 8.0 * unit(rng));
        u.data()[i] = static_cast<A>(unit(rng));
    }
    g.data()[5] = 0;
    g.data()[6] = std::numeric_limits<A>::quiet_NaN();
    u.data()[7] = std::numeric_limits<A>::quiet_NaN();
    g.data()[8] = std::numeric_limits<A>::infinity();
    dsv2::silu_mul(ctx, g.cview(), u.cview(), out.view());
    dsv2::Tensor<A, cpu, 2> in_place({n, f});
    std::copy_n(g.data(), n * f, in_place.data());
    dsv2::silu_mul(ctx, in_place.cview(), u.cview(), in_place.view());
    for (std::int64_t i = 0; i < n * f; ++i) {
        INFO("element " << i << ", g " << g.data()[i] << ", u " << u.data()[i]);
        REQUIRE(std::memcmp(&out.data()[i], &in_place.data()[i], sizeof(A)) == 0);
        const double x = g.data()[i], want = x / (1.0 + std::exp(-x)) * u.data()[i];
        if (std::isnan(want) || std::isinf(want)) {
            REQUIRE(std::isnan(want) == std::isnan(out.data()[i]));
            REQUIRE(std::isinf(want) == std::isinf(out.data()[i]));
            continue;
        }
        // A few units in the last place of the type, relative to |g u|.
        const double ulp = std::numeric_limits<A>::epsilon();
        REQUIRE(std::abs(out.data()[i] - want) <= 4 * ulp * (std::abs(x * u.data()[i]) + 1e-30));
    }
}

#if DSV2_X86_KERNELS
namespace {
DSV2_AVX512 void exp_lanes(const float* x, float* y) { _mm512_storeu_ps(y, dsv2::cpu_detail::exp16(_mm512_loadu_ps(x))); }
}  // namespace

TEST_CASE("exp16 is within 2 ulp of exp in double over the f32 range", "[kernels]") {
    if (!dsv2::cpu_detail::has_avx512()) {
        WARN("no AVX-512 on this CPU: kernel not exercised");
        return;
    }
    std::vector<float> xs;
    for (double x = -110.0; x <= 110.0; x += 0.000731) xs.push_back(static_cast<float>(x));
    for (float x : {0.0f, -0.0f, 1e-30f, -1e-30f, 88.72f, 88.73f, -87.3f, -103.9f}) xs.push_back(x);
    xs.push_back(std::numeric_limits<float>::infinity());
    xs.push_back(-std::numeric_limits<float>::infinity());
    xs.push_back(std::numeric_limits<float>::quiet_NaN());
    xs.resize((xs.size() + 15) / 16 * 16, 0.0f);
    const float ulp_min = std::numeric_limits<float>::denorm_min();
    for (std::size_t i = 0; i < xs.size(); i += 16) {
        float got[16];
        exp_lanes(xs.data() + i, got);
        for (std::size_t l = 0; l < 16; ++l) {
            const float x = xs[i + l];
            const double want = std::exp(static_cast<double>(x));
            INFO("x " << x << ", got " << got[l] << ", want " << want);
            if (std::isnan(x)) {
                REQUIRE(std::isnan(got[l]));
            } else if (want > std::numeric_limits<float>::max()) {
                REQUIRE(got[l] == std::numeric_limits<float>::infinity());
            } else if (want < std::numeric_limits<float>::min()) {
                REQUIRE(std::abs(got[l] - want) <= 2 * ulp_min);  // subnormal: absolute steps
            } else {
                const double ulp = std::ldexp(1.0, std::ilogb(want) - 23);
                REQUIRE(std::abs(got[l] - want) <= 2 * ulp);
            }
        }
    }
}
#endif
