// libFuzzer target: config.json text. An accepted config must also survive
// to_json -> config_from_json unchanged, and the figures computed from it
// (parameter counts, cache sizes, YaRN scales) must not overflow.
#include "fuzz_common.hpp"

#include <dsv2/model/config.hpp>
#include <dsv2/model/params.hpp>

#include <cmath>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto path = dsv2::fuzz::write_file("config.json", data, size);
    dsv2::fuzz::expect_dsv2_errors_only([&] {
        const dsv2::Config c = dsv2::load_config(path);
        const auto p = dsv2::count_params(c);
        DSV2_FUZZ_ASSERT(p.total > 0 && p.activated > 0 && p.activated <= p.total);
        const auto kv = dsv2::kv_cache_values_per_token(c);
        DSV2_FUZZ_ASSERT(kv.mla > 0 && kv.mha > 0);
        DSV2_FUZZ_ASSERT(std::isfinite(c.softmax_scale()) && std::isfinite(c.rotary_mscale()));
        const std::string once = dsv2::to_json(c).dump();
        const dsv2::Config again = dsv2::config_from_json(dsv2::to_json(c), "round trip");
        DSV2_FUZZ_ASSERT(dsv2::to_json(again).dump() == once);
    });
    return 0;
}
