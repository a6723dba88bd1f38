"""Datasets (`benchmarks.build_benchmark`: four seeded splits per benchmark), image reading and transforms."""
