// libFuzzer target: an .npy file parsed from memory, then its values read as
// every type the tests ask for.
#include "fuzz_common.hpp"

#include <dsv2/io/npy.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    dsv2::fuzz::expect_dsv2_errors_only([&] {
        const auto a = dsv2::parse_npy(std::span(reinterpret_cast<const char*>(data), size), "fuzz.npy");
        DSV2_FUZZ_ASSERT(a.numel() >= 0);
        for (auto s : a.shape) DSV2_FUZZ_ASSERT(s >= 0);
        DSV2_FUZZ_ASSERT(a.data.size() == static_cast<std::size_t>(a.numel()) * dsv2::npy_detail::item_size(a.descr));
        dsv2::fuzz::expect_dsv2_errors_only([&] { (void)a.as<double>(); });
        dsv2::fuzz::expect_dsv2_errors_only([&] { (void)a.as<float>(); });
        dsv2::fuzz::expect_dsv2_errors_only([&] { (void)a.as<std::int64_t>(); });
        dsv2::fuzz::expect_dsv2_errors_only([&] { (void)a.as<std::int32_t>(); });
    });
    return 0;
}
