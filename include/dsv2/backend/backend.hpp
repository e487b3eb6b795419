// What a backend must provide. Components are written once against this
// concept; a new backend is a new folder under backend/ that specialises
// Memory<B> and Context<B> and overloads these primitives (docs/backends.md).
#pragma once

#include "dsv2/backend/product.hpp"
#include "dsv2/backend/tags.hpp"
#include "dsv2/core/tensor.hpp"

#include <cstdint>
#include <vector>

namespace dsv2 {

// The concept is checked with f32 activations and f32 weights; the
// primitives are templates, so a backend that provides them for one element
// type provides the pattern for all.
template <class B>
concept Backend = requires { Memory<B>::host_accessible; } &&
    requires(Context<B>& ctx, View<const float, B, 2> x, View<const float, B, 2> w, View<float, B, 2> y,
             View<const float, B, 1> w1, View<float, B, 3> y3, View<const float, B, 3> x3,
             View<const std::int32_t, B, 1> ids, View<const std::int64_t, B, 1> pos,
             View<const double, B, 1> inv_freq, View<float, B, 3> pages, View<const float, B, 3> cpages,
             View<const std::int32_t, B, 2> idx, View<std::int32_t, B, 1> order,
             std::vector<std::int64_t>& offsets, const std::int32_t* host_ids, std::int32_t* dev_ids) {
        linear(ctx, x, w, y);                      // y = x w^T
        matmul(ctx, x, w, y);                      // y = x w
        linear_group(ctx, std::vector<Product<float, View<const float, B, 2>, B>>{});
        matmul_group(ctx, std::vector<Product<float, View<const float, B, 2>, B>>{});
        rms_norm(ctx, x, w1, 1e-6, y);
        silu_mul(ctx, x, x, y);
        add_inplace(ctx, y, x);
        embedding(ctx, w, ids, y);
        convert_rows(ctx, x, y);
        rotary_tables(ctx, inv_freq, 1.0, pos, y, y);
        apply_rotary(ctx, x, x, y3);
        attention(ctx, x3, x3, x3, std::int64_t{0}, 1.0, y3);
        cache_write(ctx, x, pos, pages);
        cache_gather(ctx, cpages, ids, y);
        group_by_expert(ctx, idx, std::int64_t{1}, order, offsets);
        gather_rows(ctx, x, ids, std::int64_t{1}, y);
        scatter_add_rows(ctx, x, ids, x, y);
        copy_to_device(ctx, host_ids, dev_ids, std::int64_t{1});
        copy_to_host(ctx, ids.data, dev_ids, std::int64_t{1});
        synchronize(ctx);
    };

}  // namespace dsv2
