"""`toolchain optimize`: INT8 flavours and mixed-precision variants measured on a target; the fastest that passes
the accuracy gate becomes that target's artifact (docs/profile.md). Import the submodules."""
