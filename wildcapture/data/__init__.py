"""Datasets (`build.build_splits`: four seeded splits per data set), image reading and transforms."""
