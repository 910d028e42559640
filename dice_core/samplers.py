"""The samplers of evaluation, sampling and the benchmarks: one list, read by the schema and
the samplers alike (and light: the GPU benchmark imports it without the schema's pydantic)."""

SAMPLERS = ("ddpm", "ddim", "dpm-solver")
