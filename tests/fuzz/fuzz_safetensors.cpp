// libFuzzer target: a whole safetensors file (8-byte length, JSON header,
// data), opened through the memory-mapped reader, then every floating-point
// tensor converted to each element type the library stores.
#include "fuzz_common.hpp"

#include <dsv2/io/safetensors.hpp>

#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto path = dsv2::fuzz::write_file("input.safetensors", data, size);
    dsv2::fuzz::expect_dsv2_errors_only([&] {
        const dsv2::SafetensorsFile f(path);
        for (const auto& [name, t] : f.tensors()) {
            DSV2_FUZZ_ASSERT(t.end >= t.begin);
            const auto bytes = f.bytes(t);
            DSV2_FUZZ_ASSERT(bytes.size() == static_cast<std::size_t>(t.numel()) * dsv2::st_item_size(t.dtype));
            if (!dsv2::st_is_float(t.dtype)) continue;
            const auto n = static_cast<std::size_t>(t.numel());
            std::vector<double> f64(n);
            std::vector<float> f32(n);
            std::vector<dsv2::bf16> b16(n);
            std::vector<dsv2::f16> h16(n);
            f.read(t, f64.data());
            f.read(t, f32.data());
            f.read(t, b16.data());
            f.read(t, h16.data());
        }
    });
    return 0;
}
