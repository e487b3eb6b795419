// The CPU backend: Eigen for products, OpenMP for threads.
#pragma once

#include "dsv2/backend/cpu/attention.hpp"
#include "dsv2/backend/cpu/context.hpp"
#include "dsv2/backend/cpu/elementwise.hpp"
#include "dsv2/backend/cpu/linear.hpp"
#include "dsv2/backend/cpu/linear_q8.hpp"
#include "dsv2/backend/cpu/mla_decode.hpp"
#include "dsv2/backend/cpu/mla_decode_q8.hpp"
#include "dsv2/backend/cpu/moe.hpp"
#include "dsv2/backend/cpu/rotary.hpp"
