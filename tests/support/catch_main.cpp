// The one Catch2 main, plus a listener that prints the error measured by
// every golden comparison (docs/testing.md): bf16/f16 are storage types
// whose error we report, not hide.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>

#include "compare.hpp"

struct ErrorReport : Catch::TestEventListenerBase {
    using TestEventListenerBase::TestEventListenerBase;
    void testRunEnded(const Catch::TestRunStats&) override { dsv2::test::print_error_report(); }
};
CATCH_REGISTER_LISTENER(ErrorReport)
