// A memory-bandwidth probe for roofline fractions: a STREAM-triad-like loop
// a[i] = b[i] + s * c[i] over arrays far larger than the caches, on the same
// number of threads as the run it is compared with, best of a few passes.
// Bytes counted per element: 3 * 8 (read b, read c, write a; write-allocate
// traffic is not counted, as STREAM does not count it).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <new>

namespace dsv2 {

struct BandwidthResult {
    double bytes_per_s = 0;  // best pass
    std::int64_t array_bytes = 0;
    int threads = 1;
};

// `array_bytes` per array (three arrays); 256 MiB each dwarfs any L3 here.
inline BandwidthResult measure_bandwidth(int threads, std::int64_t array_bytes = std::int64_t{256} << 20,
                                         int passes = 4) {
    using clock = std::chrono::steady_clock;
    const std::int64_t n = array_bytes / static_cast<std::int64_t>(sizeof(double));
    struct Free {
        void operator()(double* p) const { ::operator delete(p, std::align_val_t{64}); }
    };
    auto alloc = [&] {
        return std::unique_ptr<double, Free>(
            static_cast<double*>(::operator new(static_cast<std::size_t>(n) * sizeof(double), std::align_val_t{64})));
    };
    auto a = alloc(), b = alloc(), c = alloc();
    double* pa = a.get();
    const double* pb = b.get();
    const double* pc = c.get();
    // First touch on the threads that will stream the data.
#pragma omp parallel for num_threads(threads) schedule(static)
    for (std::int64_t i = 0; i < n; ++i) {
        a.get()[i] = 0.0;
        b.get()[i] = 1.0;
        c.get()[i] = 2.0;
    }
    double best = 0;
    const double scalar = 3.0;
    for (int p = 0; p < passes; ++p) {
        const auto t0 = clock::now();
#pragma omp parallel for num_threads(threads) schedule(static)
        for (std::int64_t i = 0; i < n; ++i) pa[i] = pb[i] + scalar * pc[i];
        const double s = std::chrono::duration<double>(clock::now() - t0).count();
        best = std::max(best, 3.0 * static_cast<double>(n) * sizeof(double) / s);
    }
    // Keep the stores observable.
    volatile double sink = pa[n / 2];
    (void)sink;
    return {best, array_bytes, threads};
}

}  // namespace dsv2
