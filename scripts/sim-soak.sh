#!/usr/bin/env bash
# The engine simulation's soak: many more seeded fault schedules than the test command runs,
# in release mode. Prints schedules run, invariant violations and the slowest recovery.
#
#   scripts/sim-soak.sh            # 20000 schedules (seeds 0..20000)
#   SIM_SEEDS=100000 SIM_FIRST=20000 scripts/sim-soak.sh
#   SIM_SEED=356 scripts/sim-soak.sh     # replay one seed: its schedule and trace
#   SIM_STRICT=1 scripts/sim-soak.sh     # fail on the known engine bug's seeds too
set -euo pipefail
cd "$(dirname "$0")/.."
export SIM_SEEDS="${SIM_SEEDS:-20000}"
# Release speed without the release profile's fat LTO (minutes of linking for a test).
export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
exec cargo test --release --lib engine::sim::tests::soak -- --ignored --nocapture
