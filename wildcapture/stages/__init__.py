"""The four stages' `run(cfg)` functions; the stage scripts only parse arguments and call them."""
